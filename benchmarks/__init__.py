"""Benchmarks for the measured goals of design section 11; each prints ratios against a same-run baseline."""
