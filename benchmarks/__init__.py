"""Benchmarks: micro (the Rust core against its Python twin), end to end, soak.

Run from the checkout root as modules (`python -m benchmarks.e2e`); README.md has the tables.
"""
