"""Cost of one training iteration per algorithm against T and the group size.

For each (T, G) a real Trainer per algorithm runs warm-up + measured iterations on the toy
world, the algorithms' iterations interleaved (alternating, in one process):
device-seconds (wall x devices), transformer forwards (NFE), backward passes, FLOPs (the
meter's count) and the peak memory of the tensors allocated in an iteration. The measured flow_grpo / flash_grpo time ratio (the
median of the per-iteration pairs) is set beside two predictions: from NFE alone, and from FLOPs (forward + backward).
"""

from __future__ import annotations

import statistics

from benchmarks.common import ALGORITHMS, interleaved_costs, make_trainer, release


def measure(algorithms, steps_list, groups, iterations: int, log=print) -> list[dict]:
    """The algorithms of each (T, G) built side by side and measured interleaved, iteration by
    iteration (benchmarks.common.interleaved_costs): load drift hits every one of them alike."""
    rows = []
    for g in groups:
        for steps in steps_list:
            trainers = {alg: make_trainer(alg, steps, g) for alg in algorithms}
            costs = interleaved_costs(trainers, iterations)
            for trainer in trainers.values():
                release(trainer)
            for alg in algorithms:
                cost = costs[alg]
                rows.append({"algorithm": alg, "T": steps, "G": g, **cost})
                log(
                    f"  {alg:<18} T={steps:<3} G={g:<3} {cost['device_s']:.3f} s  NFE {cost['nfe']:.0f}  "
                    f"bwd {cost['backward']:.0f}  {cost['flops']:.3g} FLOPs  {cost['peak_mem_mb']:.0f} MB"
                )
    return rows


def ratios(rows: list[dict], steps: int, g: int) -> dict:
    """flow_grpo / flash_grpo: measured as the median of the ratios of their interleaved
    iterations (the i-th of each ran back to back), predicted from NFE and from FLOPs."""
    by = {r["algorithm"]: r for r in rows if r["T"] == steps and r["G"] == g}
    flow, flash = by["flow_grpo"], by["flash_grpo"]
    paired = [a / b for a, b in zip(flow["times"], flash["times"], strict=True)]
    return {
        "measured": statistics.median(paired),
        "measured_min": min(paired),
        "measured_max": max(paired),
        "predicted_from_nfe": flow["nfe"] / flash["nfe"],
        "predicted_from_flops": flow["flops"] / flash["flops"],
    }


def shared_noise_saving(rows: list[dict]) -> list[dict]:
    """Flash-GRPO with a group's rollouts sharing their initial noise (a one-level tree: the
    ODE prefix up to the group's SDE step runs once) against independent noise."""
    out = []
    for r in rows:
        if r["algorithm"] != "flash_grpo_shared":
            continue
        ind = next(x for x in rows if x["algorithm"] == "flash_grpo" and x["T"] == r["T"] and x["G"] == r["G"])
        out.append(
            {
                "T": r["T"],
                "G": r["G"],
                "NFE independent": ind["nfe"],
                "NFE shared": r["nfe"],
                "NFE saved": f"{1 - r['nfe'] / ind['nfe']:.0%}",
                "device-s independent": round(ind["device_s"], 3),
                "device-s shared": round(r["device_s"], 3),
                "time saved": f"{1 - r['device_s'] / ind['device_s']:.0%}",
            }
        )
    return out


def run(quick: bool, log=print) -> dict:
    if quick:
        rows = measure(["flow_grpo", "flash_grpo"], [20], [8], iterations=3, log=log)
    else:
        rows = measure(list(ALGORITHMS), [5, 10, 20, 40], [8], iterations=5, log=log)
        rows += measure(list(ALGORITHMS), [20], [4, 16], iterations=5, log=log)
    out = {"rows": rows, "ratio_T20": ratios(rows, 20, 8)}
    if not quick:
        out["ratio_by_T"] = {t: ratios(rows, t, 8) for t in (5, 10, 20, 40)}
        out["shared_noise"] = shared_noise_saving(rows)
    return out
