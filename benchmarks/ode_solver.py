"""Reward against compute of the rollout samplers: `python -m benchmarks.ode_solver [--n 64]`.

The toy base model samples n videos of the held-out prompts (cycled) with ODE-only rollouts (no SDE step, so the
whole trajectory is the "tail" that `sampling.ode_stride` coarsens) under each solver
(`sampling.ode_solver`: euler, dpm2) and stride, from the same initial noises. Printed per
setting: forwards per video (NFE), the mean training reward (toy_hps) with a 95% CI over
videos, and the mean absolute distance of the final latents to a 200-step Euler solution
(the ODE's answer). A measurement of sampling quality per forward, not a timing: it needs
no idle machine.
"""

from __future__ import annotations

import torch

from grpo_zoo.errors import cli


@torch.no_grad()
def measure(n: int = 64, steps: tuple[int, ...] = (10, 20), strides: tuple[int, ...] = (1, 2, 3), seed: int = 0):
    from grpo_zoo import rewards
    from grpo_zoo.core.algorithm import Plan
    from grpo_zoo.flow import make_sigmas, step_table
    from grpo_zoo.models.toy import ToyPolicy
    from grpo_zoo.training.prompts import load_prompts
    from grpo_zoo.training.rollout import rollout

    policy = ToyPolicy.from_checkpoint("toy-base")
    held_out = load_prompts("toy:test", "prompts")
    prompts = [held_out[i % len(held_out)] for i in range(n)]  # repeats draw other noises
    emb = policy.encode(prompts)
    reward = rewards.get("toy_hps")

    def sample(t: int, solver: str, stride: int):
        table = step_table(make_sigmas("wan", t, 3.0), "flow_sde")
        sde = torch.zeros(len(prompts), t, dtype=torch.bool)
        plan = Plan(
            sde=sde, train=sde.clone(), weight=sde.double(), group_size=1, stride=torch.full((len(prompts),), stride)
        )
        ro = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(seed), solver=solver)
        return ro.latents, ro.nfe / len(prompts)

    exact, _ = sample(200, "euler", 1)
    rows = []
    for t in steps:
        for solver in ("euler", "dpm2"):
            for stride in strides:
                latents, nfe = sample(t, solver, stride)
                r = reward(policy.decode(latents), prompts)["toy_hps"].double()
                half = 1.96 * float(r.std()) / len(r) ** 0.5
                err = float((latents - exact).abs().mean())
                rows.append(
                    {
                        "steps": t,
                        "solver": solver,
                        "stride": stride,
                        "nfe": nfe,
                        "reward": float(r.mean()),
                        "ci": half,
                        "error": err,
                    }
                )
    return rows


@cli
def main(argv: list[str] | None = None) -> int:
    from grpo_zoo.errors import ArgParser, ConfigError

    ap = ArgParser(prog="python -m benchmarks.ode_solver", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="videos per setting (the held-out prompts, cycled)")
    args = ap.parse_args(argv)
    if args.n < 2:
        raise ConfigError(f"--n: at least 2 videos (a confidence interval needs two), got {args.n}")
    print("| steps | solver | stride | NFE per video | toy_hps (95% CI) | distance to the ODE's answer |")
    print("|---|---|---|---|---|---|")
    for r in measure(args.n):
        print(
            f"| {r['steps']} | {r['solver']} | {r['stride']} | {r['nfe']:.0f} | {r['reward']:.3f} ± {r['ci']:.3f} "
            f"| {r['error']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
