"""Benchmarks of the archive (not tests): ``python bench/ingest.py --help``."""
