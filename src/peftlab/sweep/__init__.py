"""Sweeps: W&B sweep files run with Optuna (spec -> check -> runner -> outputs)."""
