"""Benchmarks of optuna-ext: scripts that print and save their numbers under results/."""
