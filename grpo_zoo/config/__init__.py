"""Configuration: one schema machinery (schema.py: typed dataclasses with ranges, built from
YAML and dotted overrides, one-line errors with "did you mean") for run configs (run.py),
experiment files (experiment.py) and cluster profiles (cluster.py)."""
