"""Benchmarks, run as ``python -m jobs.benchmark <name>``; each has ``main(argv) -> dict``."""
