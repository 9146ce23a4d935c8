"""Hyperparameter tuning with Optuna at equal compute (`python -m grpo_zoo.tune`)."""
