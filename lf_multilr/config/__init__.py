"""The keys lf-multilr adds to a training config, and the checks of what a config asks for."""
