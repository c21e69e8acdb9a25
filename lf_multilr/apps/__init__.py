"""The command-line apps (the sweep)."""
