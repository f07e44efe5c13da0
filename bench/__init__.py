"""syncrun's benchmark: `python -m bench [--quick]` (see bench/README.md). Not part of the package."""
