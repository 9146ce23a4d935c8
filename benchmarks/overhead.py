"""Where an iteration's time goes.

- Sampler overhead: the rollout sampler (SDE steps, log-probs, kept transitions, the noise
  drawn at every step for reproducibility) against a bare Euler loop over the same
  transformer with the same batch and steps. Target: at most 1.10.
- Outside-model share: the part of a training iteration not spent in transformer forwards
  and backward passes (rewards, decoding, advantages, loss, optimizer, bookkeeping).
  Target: at most 15% on the toy model.
- A profile of one iteration (torch.profiler, by self CPU time) says where the rest goes.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import iteration_costs, make_trainer, release
from grpo_zoo.flow.sde import ode_step
from grpo_zoo.training.rollout import rollout
from grpo_zoo.training.seeding import generator


@torch.no_grad()
def bare_euler(policy, emb, table, gen) -> torch.Tensor:
    x = torch.randn(len(emb), *policy.latent_shape, generator=gen)
    for j in range(len(table.sigma)):
        sigma = table.sigma[j].float().expand(len(x))
        v = policy.raw_velocity(x, sigma, emb)
        x = ode_step(x, v, table.sigma[j].float(), table.sigma_next[j].float())
    return x


def sampler_overhead(algorithm: str, steps: int, group_size: int, reps: int) -> dict:
    trainer = make_trainer(algorithm, steps, group_size)
    planned = trainer.plan_step()  # iteration 0's prompts, embeddings and plan, as the trainer draws them
    emb, plan = planned.emb, planned.plan
    trainer.policy.eval()
    bare_nfe = len(emb) * steps
    nfe, ratios, times = 0, [], {"sampler": [], "bare": []}
    for i in range(reps + 1):  # the first pair is a warm-up
        # each pair runs back to back, in alternating order, so a slow spell of the machine
        # (other tenants, frequency changes) hits both sides; the median ratio is reported
        order = ("sampler", "bare") if i % 2 else ("bare", "sampler")
        pair = {}
        for side in order:
            t0 = time.perf_counter()
            if side == "sampler":
                ro = rollout(trainer.policy, emb, None, plan, trainer.table, 1.0, generator(i, "rollout"))
                nfe = ro.nfe
            else:
                bare_euler(trainer.policy, emb, trainer.table, generator(i, "bare"))
            pair[side] = time.perf_counter() - t0
        if i:
            times["sampler"].append(pair["sampler"])
            times["bare"].append(pair["bare"])
            ratios.append((pair["sampler"] / nfe) / (pair["bare"] / bare_nfe))
    release(trainer)
    sampler_s, bare_s = statistics.median(times["sampler"]), statistics.median(times["bare"])
    return {
        "algorithm": algorithm,
        "T": steps,
        "G": group_size,
        "sampler_s": sampler_s,
        "bare_s": bare_s,
        "sampler_nfe": nfe,
        "bare_nfe": bare_nfe,
        "ratio_per_nfe": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def outside_share(algorithm: str, steps: int, group_size: int, iterations: int) -> dict:
    trainer = make_trainer(algorithm, steps, group_size)
    cost = iteration_costs(trainer, iterations)
    release(trainer)
    return {"algorithm": algorithm, "T": steps, "G": group_size, **cost}


def profile(algorithm: str, steps: int, group_size: int, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer = make_trainer(algorithm, steps, group_size)
    trainer.iteration()
    trainer.step += 1
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.iteration()
    release(trainer)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run(quick: bool, log=print) -> dict:
    reps = 6 if quick else 15
    samp = [sampler_overhead("flow_grpo", 20, 8, reps)]
    if not quick:
        samp.append(sampler_overhead("flash_grpo", 20, 8, reps))
    for s in samp:
        log(
            f"  sampler {s['algorithm']}: {s['sampler_s']:.3f} s for {s['sampler_nfe']} NFE vs bare Euler "
            f"{s['bare_s']:.3f} s for {s['bare_nfe']} NFE: {s['ratio_per_nfe']:.3f}x per NFE"
        )
    shares = [
        outside_share(a, 20, 8, 2 if quick else 4) for a in (["flash_grpo"] if quick else ["flow_grpo", "flash_grpo"])
    ]
    for s in shares:
        log(f"  outside model {s['algorithm']}: {s['outside_model_share']:.1%} of {s['device_s']:.3f} s")
    out = {"sampler": samp, "outside": shares}
    if not quick:
        out["profile_flash_grpo"] = profile("flash_grpo", 20, 8)
    return out
