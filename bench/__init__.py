"""Benchmarks: each script measures ratios side by side in one run and writes bench/results/*.json."""
