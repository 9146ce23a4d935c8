"""The benchmarks' figures as Markdown tables (what BENCHMARKS.md shows)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SHARED_NOISE_HEADING = "### flash_grpo with `initial_noise: shared` against independent noise (G = 8)"
SHARED_NOISE_TEXT = (
    "A group's rollouts share one initial noise and branch at the group's SDE step k: the rollout "
    "is a one-level tree whose ODE prefix (k steps and the velocity at k) runs once per group, not G "
    "times. NFE counts every transformer forward of the iteration (rollout and update)."
)


def _table(rows: list[dict], columns: dict[str, str], fmt: dict[str, str]) -> str:
    df = pd.DataFrame(rows)[list(columns)].rename(columns=columns)
    for col, f in fmt.items():
        name = columns[col]
        df[name] = df[name].map(lambda v, f=f: format(v, f))
    return df.to_markdown(index=False)


def markdown(res: dict) -> str:
    m = res["machine"]
    out = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"device {m['device']}, Python {m['python']}. Took {res['seconds']:.0f} s.",
        "",
    ]
    if "iteration_cost" in res:
        ic = res["iteration_cost"]
        for r in ic["rows"]:
            r["spread"] = f"{r['device_s_min']:.2f}-{r['device_s_max']:.2f}"
        out += ["## Cost per iteration (P = 4 prompts)", ""]
        out.append(
            _table(
                ic["rows"],
                {
                    "algorithm": "algorithm",
                    "T": "T",
                    "G": "G",
                    "device_s": "device-s",
                    "spread": "min-max",
                    "nfe": "NFE",
                    "backward": "backward",
                    "flops": "FLOPs",
                    "peak_mem_mb": "peak MB",
                    "outside_model_share": "outside model",
                },
                {
                    "device_s": ".3f",
                    "nfe": ".0f",
                    "backward": ".0f",
                    "flops": ".3g",
                    "peak_mem_mb": ".0f",
                    "outside_model_share": ".1%",
                },
            )
        )
        by_t = ic.get("ratio_by_T") or {20: ic["ratio_T20"]}
        rows = [{"T": t, **r} for t, r in by_t.items()]
        out += ["", "### flow_grpo / flash_grpo at G = 8: measured against predicted", ""]
        out.append(
            _table(
                rows,
                {
                    "T": "T",
                    "measured": "measured (device-s)",
                    "predicted_from_nfe": "predicted (NFE)",
                    "predicted_from_flops": "predicted (FLOPs)",
                },
                {"measured": ".2f", "predicted_from_nfe": ".2f", "predicted_from_flops": ".2f"},
            )
        )
        out.append("")
        if ic.get("shared_noise"):
            out += [SHARED_NOISE_HEADING, "", SHARED_NOISE_TEXT, ""]
            out.append(_table(ic["shared_noise"], {k: k for k in ic["shared_noise"][0]}, {}))
            out.append("")
    if "overhead" in res:
        ov = res["overhead"]
        out += ["## Overhead", "", "Sampler against a bare Euler loop over the same transformer (target <= 1.10):", ""]
        out.append(
            _table(
                ov["sampler"],
                {
                    "algorithm": "plan",
                    "T": "T",
                    "G": "G",
                    "sampler_s": "sampler s",
                    "sampler_nfe": "sampler NFE",
                    "bare_s": "bare s",
                    "bare_nfe": "bare NFE",
                    "ratio_per_nfe": "ratio per NFE (median)",
                    "ratio_min": "min",
                    "ratio_max": "max",
                },
                {"sampler_s": ".3f", "bare_s": ".3f", "ratio_per_nfe": ".3f", "ratio_min": ".3f", "ratio_max": ".3f"},
            )
        )
        out += ["", "Share of an iteration outside transformer forward and backward (target <= 15%):", ""]
        out.append(
            _table(
                ov["outside"],
                {
                    "algorithm": "algorithm",
                    "T": "T",
                    "G": "G",
                    "device_s": "device-s",
                    "model_s": "in model s",
                    "outside_model_share": "outside model",
                },
                {"device_s": ".3f", "model_s": ".3f", "outside_model_share": ".1%"},
            )
        )
        if "profile_flash_grpo" in ov:
            out += [
                "",
                "Profile of one flash_grpo iteration (T = 20, G = 8), by self CPU time:",
                "",
                "```",
                ov["profile_flash_grpo"].rstrip(),
                "```",
            ]
        out.append("")
    if res.get("time_to_target"):
        tt = res["time_to_target"]
        rows = [{"algorithm": k, **v} for k, v in tt["algorithms"].items()]
        for r in rows:
            r["device_s"] = r["compute/device_hours"] * 3600
            r["flops"] = r["compute/flops"]
            r["device_s_all"] = r["compute/device_hours_lower_bound"] * 3600
            r["flops_all"] = r["compute/flops_lower_bound"]
            r["reached"] = f"{r['reached']}/{r['seeds']}"
        out += [
            f"## Time to target (eval reward {tt['target']})",
            "",
            "Means over the seeds that reach the target; * over all seeds, a seed that never reaches it "
            "counted at the whole budget it spent (a lower bound on its cost).",
            "",
        ]
        out.append(
            _table(
                rows,
                {
                    "algorithm": "algorithm",
                    "reached": "seeds reaching",
                    "device_s": "device-s",
                    "flops": "FLOPs",
                    "speedup_device_hours": "speed-up (time)",
                    "speedup_flops": "speed-up (FLOPs)",
                    "device_s_all": "device-s, all seeds*",
                    "flops_all": "FLOPs, all seeds*",
                    "speedup_device_hours_bounded": "speed-up (time)*",
                    "speedup_flops_bounded": "speed-up (FLOPs)*",
                    "final_eval_reward": "final eval reward",
                },
                {
                    "device_s": ".1f",
                    "flops": ".3g",
                    "speedup_device_hours": ".2f",
                    "speedup_flops": ".2f",
                    "device_s_all": ".1f",
                    "flops_all": ".3g",
                    "speedup_device_hours_bounded": ".2f",
                    "speedup_flops_bounded": ".2f",
                    "final_eval_reward": ".3f",
                },
            )
        )
    return "\n".join(out) + "\n"


def merge(paths: list[str]) -> dict:
    """Results of several runs (e.g. --only time_to_target and the rest) as one."""
    import json

    out: dict = {}
    for p in paths:
        data = json.loads(Path(p).read_text())
        seconds = out.get("seconds", 0) + (data.get("seconds") or 0)
        out.update(data)
        out["seconds"] = seconds
    return out


if __name__ == "__main__":  # python -m benchmarks.report RESULT.json [RESULT.json ...] > tables.md
    import sys

    print(markdown(merge(sys.argv[1:])))
