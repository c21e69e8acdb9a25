"""What lf-multilr supports: the versions its patch targets were verified on, and LLaMA-Factory's back ends."""
