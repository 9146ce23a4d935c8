"""Roll out a plan: sample B = P x G trajectories, keep only the transitions the plan trains.

Every trajectory takes all T steps (a forward at each: NFE), stochastic where the plan
says SDE, Euler ODE elsewhere. For each trained transition the rollout records
(x_k, x_{k+1}, logp_old, sigma_k, raw weight) for the shared loss.

A plan may branch (`plan.parent`, `plan.branch_at`): a row shares its parent's initial
noise and prefix up to its branch step, so that prefix (and the velocity at the branch
step) is computed once, not once per row: the same numbers, fewer forwards. Shared initial
noise (`initial_noise: shared`) is the one-level case: a group's rows branch from its first
row at the group's first SDE step. A tree is parents that branch themselves.

Randomness: one generator, drawn in a fixed order (one initial noise per root row, then
one full noise tensor per step), so a rollout is reproducible from its seed whatever is
skipped.
"""

from __future__ import annotations

import torch

from grpo_zoo.core.contract import Plan, RolloutResult, Transitions
from grpo_zoo.flow.multistep import ODE_SOLVERS, dpm2_ratio, velocity_of
from grpo_zoo.flow.sde import StepTable, ode_step, sde_step
from grpo_zoo.models.base import Policy, cfg_multiplier


def initial_noise(plan: Plan, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """x_0 [B, ...]: one draw per root row, in row order; a branch starts from its root's."""
    b = len(plan.parent)
    rows = torch.arange(b)
    roots = (plan.parent == rows).nonzero().flatten()
    root_of = plan.parent.clone()
    for r in range(b):  # parents come first
        root_of[r] = r if plan.parent[r] == r else root_of[plan.parent[r]]
    noise = torch.randn(len(roots), *shape, generator=gen)
    slot = torch.full((b,), -1, dtype=torch.long)
    slot[roots] = torch.arange(len(roots))
    return noise[slot[root_of]]


@torch.no_grad()
def rollout(
    policy: Policy,
    emb: torch.Tensor,
    null_emb: torch.Tensor | None,
    plan: Plan,
    table: StepTable,
    guidance: float,
    gen: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    keep_velocity: bool = False,
    solver: str = "euler",
    micro_batch: int | None = None,
) -> RolloutResult:
    """Sample the plan's trajectories for prompt embeddings `emb` [B, L, D] (row b = p * G + g).

    A row that shares a prefix with its parent takes the parent's velocity up to (and at)
    its branch step and the parent's transitions before it: each shared forward runs once.
    ODE steps use `solver` (grpo_zoo/flow/multistep.py: `euler`, or `dpm2`, the
    second-order multistep DPM-Solver++); a row holds its data prediction at the steps its
    strided tail skips (`plan.skips()`). SDE steps always use the model's own velocity.
    `micro_batch` rows go through the transformer at once (None: all of them)."""
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r} (choose one of {', '.join(ODE_SOLVERS)})")
    b, t = plan.sde.shape
    rows_all = torch.arange(b)
    x = initial_noise(plan, policy.latent_shape, gen).to(device)
    src_v, src_x = plan.sources()
    skip = plan.skips()
    row_skip = skip.gather(0, src_v)  # [B, T]: the row takes a held step (its velocity's owner skips)
    node_sigma = torch.cat([table.sigma, table.sigma_next[-1:]]).double()
    next_sigma = node_sigma[_next_nodes(row_skip)]  # [B, T] sigma of each row's next model call
    post = torch.arange(t)[None] > plan.last_sde()[:, None]  # [B, T] ODE steps after the row's last SDE step
    # a transition other rows take (a shared prefix) is post only where it is post for all of them
    post &= ~(torch.zeros(b, t).scatter_add_(0, src_x, (~post).float()) > 0)
    plain = solver == "euler" and not bool(skip.any())
    held = None if plain else torch.zeros_like(x)  # each row's data prediction of its last model call
    hist = torch.zeros_like(x) if solver == "dpm2" else None  # the model's own data prediction there
    hist_sigma = torch.full((b,), float("nan"), dtype=torch.float64)  # its sigma (NaN: none yet)
    cfg_mult = cfg_multiplier(guidance, null_emb)
    nfe = 0
    logp_all = torch.zeros(b, t)
    recs: dict[str, list] = {k: [] for k in ("traj", "step", "x", "x_next", "logp_old", "weight", "v_sample")}
    steps = t if plan.tail_from is None else plan.tail_from
    pred = None
    for j in range(steps):
        compute = (src_v[:, j] == rows_all) & ~skip[:, j]
        every = bool(compute.all())
        rows = compute.nonzero().flatten()
        v = torch.empty_like(x)
        if len(rows):
            x_in = x if every else x[rows]
            sigma = table.sigma[j].float().to(device).expand(len(rows))
            v[rows] = velocity(
                policy, x_in.to(dtype), sigma, emb if every else emb[rows], null_emb, guidance, micro_batch
            )
            nfe += len(rows) * cfg_mult
        if not every:  # rows of a shared prefix take the velocity of the row that computed it
            v = v[src_v[:, j].to(v.device)]
        if not plain:
            v = _solve(
                v, x, float(table.sigma[j]), row_skip[:, j], post[:, j], next_sigma[:, j], held, hist, hist_sigma
            )
        if plan.score_prediction and j == steps - 1:
            pred = x - float(table.sigma[j]) * v  # the last model call's clean-sample estimate
        eps = torch.randn(x.shape, generator=gen).to(device)
        scale = plan.noise_scale[:, j]
        if bool((scale != 1).any()):  # drawn wider than the Gaussian it is scored under
            eps = eps * scale.float().view(-1, *([1] * (x.dim() - 1))).to(device)
        sde = plan.sde[:, j]
        logp = torch.zeros(b)
        step = (table.sigma[j], table.sigma_next[j], table.std_t[j])
        if bool(sde.all()):  # every row stochastic (the common case of Flow-GRPO's SDE window)
            x_next, lp, _ = sde_step(table.kind, x, v, *step, noise=eps)
            logp = lp.cpu()
        else:
            x_next = ode_step(x, v, table.sigma[j].float(), table.sigma_next[j].float())
            sde_rows = sde.nonzero().flatten()
            if len(sde_rows):
                xs, lp, _ = sde_step(table.kind, x[sde_rows], v[sde_rows], *step, noise=eps[sde_rows])
                x_next[sde_rows] = xs
                logp[sde_rows] = lp.cpu()
        owner = src_x[:, j]
        if bool((owner != rows_all).any()):  # a shared transition: the owner's sample, not a new one
            x_next, logp = x_next[owner.to(x_next.device)], logp[owner]
        logp_all[:, j] = logp
        train_rows = plan.train[:, j].nonzero().flatten()
        if len(train_rows):
            recs["traj"].append(train_rows)
            recs["step"].append(torch.full((len(train_rows),), j))
            recs["x"].append(x[train_rows].cpu())
            recs["x_next"].append(x_next[train_rows].cpu())
            recs["logp_old"].append(logp[train_rows])
            recs["weight"].append(plan.weight[train_rows, j])
            if keep_velocity:  # only an objective that asks for it pays the copy
                recs["v_sample"].append(v[train_rows].cpu())
        x = x_next
    if plan.tail is not None:
        x, tail_nfe, tail_pred = _tail(
            policy, x, emb, null_emb, guidance, plan.tail, solver, hist, hist_sigma, dtype, micro_batch
        )
        nfe += tail_nfe * cfg_mult
        if plan.score_prediction and tail_pred is not None:  # the tail made the last model call
            pred = tail_pred
    empty = {"traj": torch.empty(0, dtype=torch.long), "step": torch.empty(0, dtype=torch.long)}
    empty["weight"] = torch.empty(0, dtype=torch.float64)  # an ODE-only plan trains no transition
    order_keys = {k: torch.cat(v) if v else empty.get(k, torch.empty(0)) for k, v in recs.items()}
    if not keep_velocity:
        order_keys["v_sample"] = None
    tr = Transitions(**order_keys)
    if len(tr):
        order = torch.argsort(tr.traj * t + tr.step)
        tr = tr.select(order)
    return RolloutResult(latents=x if pred is None else pred, transitions=tr, nfe=nfe, logp=logp_all)


def _tail(policy, x, emb, null_emb, guidance, nodes, solver, hist, hist_sigma, dtype, micro_batch):
    """The ODE from nodes[0] to nodes[-1] on the re-gridded nodes (`Plan.tail`), every row a model
    call a node but the last; dpm2 continues the history of the model calls before it. Returns the
    last x, the forwards and the data prediction of the last call (None: no call)."""
    b, nfe, pred = len(x), 0, None
    for sig, nxt in zip(nodes[:-1], nodes[1:]):
        sigma = torch.full((b,), sig, dtype=torch.float32, device=x.device)
        v = velocity(policy, x.to(dtype), sigma, emb, null_emb, guidance, micro_batch)
        nfe += b
        if solver == "dpm2":
            d = x - sig * v
            ratio = dpm2_ratio(hist_sigma, sig, torch.full((b,), nxt, dtype=torch.float64))
            d_eff = d + (d - hist) * ratio.float().view(-1, *([1] * (x.dim() - 1))).to(x.device)
            hist.copy_(d)
            hist_sigma.fill_(sig)
            v = velocity_of(x, d_eff, sig)
        pred = x - sig * v
        x = ode_step(x, v, torch.tensor(sig, dtype=torch.float32), torch.tensor(nxt, dtype=torch.float32))
    return x, nfe, pred


def velocity(policy, x, sigma, emb, null_emb, guidance, micro_batch: int | None = None) -> torch.Tensor:
    """policy.velocity (float32) over `micro_batch` rows at a time: the rows are independent, so the
    result is the whole batch's (to the kernels' float rounding), at a micro-batch's activations."""
    m = len(x) if micro_batch is None else micro_batch
    parts = [
        policy.velocity(x[i : i + m], sigma[i : i + m], emb[i : i + m], null_emb, guidance).float()
        for i in range(0, len(x), m)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _next_nodes(skip: torch.Tensor) -> torch.Tensor:
    """[B, T] long: the next step after j at which row b runs the model (T: the end)."""
    b, t = skip.shape
    nxt = torch.full((b, t), t, dtype=torch.long)
    for j in range(t - 2, -1, -1):
        nxt[:, j] = torch.where(skip[:, j + 1], nxt[:, j + 1], j + 1)
    return nxt


def _solve(v, x, sig, held_j, post_j, next_sigma_j, held, hist, hist_sigma) -> torch.Tensor:
    """The velocity each row steps with at a step of noise level `sig`. A row that holds
    (`held_j`) steps with its last model call's data prediction; a row that ran the model
    keeps the model's velocity, but after its last SDE step (`post_j`) under dpm2 takes
    DPM-Solver++(2M)'s corrected data prediction. Every model call updates the history."""
    ran = ~held_j
    d = x - sig * v
    d[held_j] = held[held_j]
    change = held_j.clone()
    if hist is not None:
        ratio = dpm2_ratio(hist_sigma, sig, next_sigma_j) * (post_j & ran)
        fix = ratio != 0
        if bool(fix.any()):
            d_eff = d[fix] + (d[fix] - hist[fix]) * ratio[fix].float().view(-1, *([1] * (x.dim() - 1))).to(x.device)
            hist[ran] = d[ran]
            d[fix] = d_eff
            change |= fix
        else:
            hist[ran] = d[ran]
        hist_sigma[ran] = sig
    held[ran] = d[ran]
    if bool(change.any()):
        v = v.clone()
        v[change] = velocity_of(x[change], d[change], sig)
    return v


@torch.no_grad()
def generate_ode(
    policy: Policy,
    prompts: list[str],
    table: StepTable,
    guidance: float,
    seed: int,
    batch_size: int = 64,
    index_offset: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    micro_batch: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Deterministic ODE sampling (evaluation): videos [B, 3, F, H, W] and the NFE spent.

    Sample i starts from noise seeded by (seed, index_offset + i), so results do not
    depend on batching or on how samples are split over ranks. `micro_batch`: samples per
    transformer forward (None: `batch_size`).
    """
    null = policy.encode([""]) if cfg_multiplier(guidance) > 1 else None
    videos, nfe = [], 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        x = torch.stack(
            [
                torch.randn(
                    policy.latent_shape,
                    generator=torch.Generator().manual_seed(seed * 1_000_003 + index_offset + start + i),
                )
                for i in range(len(chunk))
            ]
        ).to(device)
        emb = policy.encode(chunk)
        for j in range(table.num_steps):
            sigma = table.sigma[j].float().to(device).expand(len(x))
            v = velocity(policy, x.to(dtype), sigma, emb, null, guidance, micro_batch)
            x = ode_step(x, v, table.sigma[j].float(), table.sigma_next[j].float())
            nfe += len(x) * cfg_multiplier(guidance, null)
        videos.append(policy.decode(x).cpu())
    return torch.cat(videos), nfe
