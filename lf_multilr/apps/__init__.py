"""The command-line apps (the sweep) and the web UI's pure parts."""
