"""The pipeline's performance benchmark: ``python -m bench`` (see bench/__main__.py, docs/benchmarks.md)."""
