"""Which module owns a parameter, and the param groups built from that."""
