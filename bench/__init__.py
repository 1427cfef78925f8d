"""Benchmarks: `just bench` (python -m bench) prints one table against the anchors."""
