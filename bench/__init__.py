"""Benchmarks: ``pytest bench/ --benchmark-only``; ``python bench/report.py`` turns the JSON into docs."""
