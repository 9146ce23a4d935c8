"""Regenerate the analysis notebooks (they only call grpo_zoo.analysis / grpo_zoo.report).

    python analysis/make_notebooks.py

Each notebook reads the runs under $GRPO_ZOO_RUNS (default: runs/quickstart).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
SETUP = """import os
from pathlib import Path

from grpo_zoo.analysis import load_runs

RUNS = Path(os.environ.get("GRPO_ZOO_RUNS", "../runs/quickstart"))
OUT = Path(os.environ.get("GRPO_ZOO_NOTEBOOK_OUT", RUNS / "report"))
data = load_runs(RUNS)
data.runs[["name", "variant", "algorithm", "status", "eval/reward", "compute/device_hours"]]"""

NOTEBOOKS = {
    "efficiency": (
        "# Efficiency: reward versus compute\n\nThe paper's Fig. 1 (right): eval reward against device-hours, one band per "
        "algorithm over seeds, and the compute each algorithm needs to reach a reward.",
        [
            "from grpo_zoo.analysis.plots import reward_vs_compute\n\nreward_vs_compute(data, OUT)",
            "from grpo_zoo.analysis.tables import efficiency, render\n\ntable, target = efficiency(data)\nprint(render(table, 'md'))",
        ],
    ),
    "collapse": (
        "# Collapse\n\nTrain and eval reward curves; a run is flagged when its eval reward falls below its best and stays "
        "there, or its zero-std ratio or KL blows up.",
        [
            "from grpo_zoo.analysis.plots import reward_curves\n\nreward_curves(data, OUT)",
            "from grpo_zoo.analysis.stats import collapse_table\n\ncollapse_table(data, drop=0.3)",
        ],
    ),
    "ablation": (
        "# Ablations: grouping and rectification\n\nFinal eval reward per variant with bootstrap CIs, and the gradient size "
        "by timestep that rectification flattens.",
        [
            "from grpo_zoo.analysis.plots import ablation_bars, grad_norm_by_timestep\n\nablation_bars(data, OUT)\ngrad_norm_by_timestep(data, OUT)",
            "from grpo_zoo.analysis.tables import ablation, render\n\nprint(render(ablation(data), 'md'))",
        ],
    ),
    "table1": (
        "# Table 1\n\nMethod, compute and the eval metrics (VBench's columns on the toy world), best per column in bold.",
        [
            "from grpo_zoo.analysis.tables import render, table1\n\nt = table1(data)\nprint(render(t, 'md'))",
            "print(render(t, 'tex'))",
        ],
    ),
}


def main() -> None:
    for name, (intro, cells) in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(intro), new_code_cell(SETUP)] + [new_code_cell(c) for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
