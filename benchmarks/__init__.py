"""Benchmarks: timings side by side and scaling curves (``make bench``)."""
