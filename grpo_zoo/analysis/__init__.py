"""Analysis: run directories into pandas, aggregates with t-intervals, plots and tables.

Notebooks in analysis/ call only these functions.
"""

from grpo_zoo.analysis.load import Runs, load_runs
from grpo_zoo.analysis.stats import aggregate, collapse_table, compute_to_target, detect_collapse, mean_ci

__all__ = ["Runs", "aggregate", "collapse_table", "compute_to_target", "detect_collapse", "load_runs", "mean_ci"]
