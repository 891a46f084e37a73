"""Benchmarks that write JSON: ``python -m lowbit.bench NAME``."""
