"""Regenerate the analysis notebooks (they only call grpo_zoo.analysis / grpo_zoo.report).

    python analysis/make_notebooks.py

Each notebook reads the runs under $GRPO_ZOO_RUNS (default: runs/quickstart), shows its figures
inline and writes them to its own folder, analysis/out/<notebook>/ ($GRPO_ZOO_NOTEBOOK_OUT).
Open them with `jupyter lab analysis/` (jupyterlab is in the dev extra).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
SETUP = """import os
from pathlib import Path

from IPython.display import display

from grpo_zoo.analysis import load_runs

NOTEBOOK = "{name}"
RUNS = Path(os.environ.get("GRPO_ZOO_RUNS", "../runs/quickstart"))
OUT = Path(os.environ.get("GRPO_ZOO_NOTEBOOK_OUT", Path("out") / NOTEBOOK))  # this notebook's own folder
data = load_runs(RUNS)
data.runs[["name", "variant", "algorithm", "status", "eval/reward", "compute/flops", "compute/device_hours"]]"""

SETUP_TEXT = (
    "Load every run under `RUNS` (the quickstart's by default; set `GRPO_ZOO_RUNS` to another sweep's folder) "
    "into one table per run and one per metrics row (`grpo_zoo.analysis.load_runs`). Figures go to this "
    "notebook's own folder, `analysis/out/<notebook>/` (`GRPO_ZOO_NOTEBOOK_OUT` moves it), never into a report's."
)

NOTEBOOKS = {
    "efficiency": (
        "# Efficiency: reward versus compute\n\nThe paper's Fig. 1 (right): eval reward against compute, one band per "
        "algorithm over seeds, in the runs' budget unit (training FLOPs for the toy runs; device-hours where a run "
        "budgets in them), and the compute each algorithm needs to reach a common reward.",
        [
            (
                "`reward_vs_compute` draws each variant's mean eval reward with its 95% band over seeds, a dot at every "
                "evaluation and the base model's reward; `display` shows the PNG it saved.",
                "from IPython.display import Image\n\nfrom grpo_zoo.analysis.plots import reward_vs_compute\n\ndisplay(Image(reward_vs_compute(data, OUT)))",
            ),
            (
                "`efficiency` gives the compute each variant needs to reach the target reward (the report's rule) and the "
                "speed-up against the baseline variant.",
                'from grpo_zoo.analysis.tables import efficiency, render\n\ntable, target = efficiency(data)\nprint(f"target eval reward {target:.3f}")\nprint(render(table, "md"))',
            ),
        ],
    ),
    "collapse": (
        "# Collapse\n\nTrain and eval reward curves. A run is flagged when, at any point, its eval reward (or the "
        "10-iteration mean of its training reward) falls more than 25% below its running best or more than 5% below "
        "the base model's, even if it recovers later; zero reward spread and KL blow-ups are further reasons (the "
        "report's rule and defaults).",
        [
            (
                "`reward_curves` plots the training reward (the SDE rollouts' own, not comparable across methods) and the "
                "evaluation reward (ODE, comparable) on their own axes, a red x where a run collapsed.",
                "from IPython.display import Image\n\nfrom grpo_zoo.analysis.plots import reward_curves\n\ndisplay(Image(reward_curves(data, OUT)))",
            ),
            (
                "`collapse_table` gives each run's verdict with the report's defaults (drop 0.25, 5% below the base).",
                "from grpo_zoo.analysis.stats import collapse_table\n\ncollapse_table(data)",
            ),
        ],
    ),
    "ablation": (
        "# Ablations: grouping and rectification\n\nFinal eval reward per variant over the base model with 95% CIs, "
        "and the gradient size by timestep that rectification flattens.",
        [
            (
                "`ablation_bars`: each variant's final eval reward minus the base model's, mean with its CI, each seed a "
                "dot; `grad_norm_by_timestep`: the mean per-transition gradient size at each trained step (log scale).",
                "from IPython.display import Image\n\nfrom grpo_zoo.analysis.plots import ablation_bars, grad_norm_by_timestep\n\ndisplay(Image(ablation_bars(data, OUT)))\ndisplay(Image(grad_norm_by_timestep(data, OUT)))",
            ),
            (
                "The ablation table: every variant's final eval reward and its difference to the full method.",
                'from grpo_zoo.analysis.tables import ablation, render\n\nprint(render(ablation(data), "md"))',
            ),
        ],
    ),
    "table1": (
        "# Table 1\n\nMethod, compute and the eval metrics (VBench's columns on the toy world), best per column in bold.",
        [
            (
                "The table as a frame, then as Markdown (the report's `table1.md`).",
                'from grpo_zoo.analysis.tables import render, table1\n\nt = table1(data)\ndisplay(t)\nprint(render(t, "md"))',
            ),
            ("The same as LaTeX, for a paper.", 'print(render(t, "tex"))'),
        ],
    ),
}


def main() -> None:
    for name, (intro, cells) in NOTEBOOKS.items():
        setup = SETUP.replace("{name}", name)
        body = [new_markdown_cell(intro), new_markdown_cell(SETUP_TEXT), new_code_cell(setup)]
        for text, code in cells:
            body += [new_markdown_cell(text), new_code_cell(code)]
        nb = new_notebook(cells=body)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
