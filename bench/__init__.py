"""Benchmarks of the archive (not tests): ``python -m bench.ingest --help``."""
