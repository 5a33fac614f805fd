"""Benchmarks: `make bench` prints messages/s and latency tables with the command that made them."""
