"""Launching many runs: sweeps through submitit (sweep.py, jobs.py), Optuna tuning (tune.py,
tuning/)."""
