"""Benchmarks that compare this project with the tools users would pick instead (not part of `make test`)."""
