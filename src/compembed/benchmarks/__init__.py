"""Benchmarks of speed and memory, reported as ratios against baselines measured in the same run."""
