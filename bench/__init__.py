"""Benchmarks: each `bench/<name>` runs from the repository root, as root, and prints its figures
as one JSON object on its last line (see bench/README.md)."""
