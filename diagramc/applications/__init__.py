"""Applications built on compiled kernels, as a user would build them: the Born-series study (demo)."""
