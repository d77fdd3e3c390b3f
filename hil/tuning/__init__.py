"""Offline tuning of controller configs (Optuna over campaign scenarios) and comparison."""
