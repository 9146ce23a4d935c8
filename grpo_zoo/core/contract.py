"""The contract between the bench and a method: the data that flows through one iteration.

    PlanContext -> Algorithm.plan -> Plan -> rollout -> RolloutResult (Transitions)
    -> reward -> AdvantageContext -> Objective.items (Transitions or ReNoised)
    -> Algorithm.advantages -> Batch -> Objective.loss -> Terms

Only data types live here (they import nothing but the flow math); behaviour lives in
grpo_zoo/core/algorithm.py, grpo_zoo/core/objective.py and grpo_zoo/training/.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from grpo_zoo.flow.sde import StepTable


class Groups:
    """P prompts (`prompts`) of G rollouts each (`group_size`): row b = p * G + g."""

    prompts: list[str]
    group_size: int

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def batch_size(self) -> int:
        """B = P * G trajectories."""
        return len(self.prompts) * self.group_size


@dataclass(kw_only=True)
class PlanContext(Groups):
    """What an algorithm knows when it plans one iteration on one rank."""

    iteration: int
    """The training iteration (0-based) this plan is for; a resumed run passes the same."""
    prompts: list[str]
    """This rank's P prompts; row b = p * G + g of the plan belongs to prompts[b // G]."""
    group_size: int
    """G: rollouts per prompt."""
    table: StepTable
    """The sampling schedule's per-step constants (sigma, noise std, lambda, ...)."""
    gen: torch.Generator
    """Seeded from (seed, iteration, rank): draw every random choice of the plan from it."""
    rank: int = 0
    world: int = 1
    ode_stride: int = 1
    """sampling.ode_stride: the stride `make_plan` gives every row's ODE tail (Plan.stride)."""
    shift: float = 3.0
    """sampling.shift: the timestep shift s of the schedule (sigma = s u / (1 + (s - 1) u)), for an
    algorithm that lays out nodes of its own (a re-gridded ODE tail, `Plan.tail`)."""

    @classmethod
    def of(
        cls, num_prompts: int, group_size: int, table: StepTable, gen: torch.Generator, iteration: int = 0, **kw
    ) -> PlanContext:
        """A context for P anonymous prompts (tools and tests that need no prompt text)."""
        prompts = [f"prompt {i}" for i in range(num_prompts)]
        return cls(iteration=iteration, prompts=prompts, group_size=group_size, table=table, gen=gen, **kw)


@dataclass(kw_only=True)
class Plan:
    """What a rollout of B = P * G trajectories over T steps does; row b = p * G + g.

    Trajectories may share a prefix: row b follows row `parent[b]` (an earlier row) up to
    step `branch_at[b]`: it has the same initial noise and the same transitions before
    that step, and the same velocity at it, computed once; from that step on it draws its
    own noise. Several depths of branching (a tree) are parents that branch themselves.
    """

    sde: torch.Tensor
    """[B, T] bool: step j of trajectory b is stochastic (SDE); ODE otherwise."""
    train: torch.Tensor
    """[B, T] bool: transition (b, j) is trained; always a subset of `sde`, and only where b
    computes the step itself (not inside a prefix it shares)."""
    weight: torch.Tensor
    """[B, T] float64: raw weight of each trained transition (0 elsewhere)."""
    group_size: int
    """G: consecutive rows form one prompt's group."""
    parent: torch.Tensor | None = None
    """[B] long: the row whose prefix row b shares (b itself: a root with its own initial noise)."""
    branch_at: torch.Tensor | None = None
    """[B] long: the step at which row b leaves its parent (ignored for roots)."""
    group: torch.Tensor | None = None
    """[B, T] long: the advantage group of each trained transition (None: the prompt's group)."""
    stride: torch.Tensor | None = None
    """[B] long >= 1: after its last SDE step, row b runs the model only at every stride-th
    step and holds its data prediction in between: an ODE on a coarser grid of the same
    sigmas (grpo_zoo/flow/multistep.py), fewer forwards. 1 (default): every step."""
    noise_scale: torch.Tensor | None = None
    """[B, T] float > 0: the SDE noise row b draws at step j is this multiple of the Gaussian the
    step is scored under (BranchGRPO's split noise: its log-probs are the unscaled law's, old and
    new alike). None: 1 everywhere, every SDE step samples the Gaussian it scores."""
    score_prediction: bool = False
    """The reward scores each row's data prediction of its last model call, x - sigma v, instead
    of the final latent (BranchGRPO decodes the last step's predicted clean sample)."""
    tail_from: int | None = None
    """Every row leaves the table's steps at this step (after its last SDE step) and runs the ODE
    on the nodes `tail` instead (MixGRPO-Flash's re-gridded tail); None: the table's steps."""
    tail: tuple[float, ...] | None = None
    """The re-gridded tail's sigmas, from the table's sigma at `tail_from` down to 0: len - 1
    model calls, taken at steps tail_from, tail_from + 1, ... (columns the tail does not fill
    run nothing). One node: the rollout ends at that sigma (the reference decodes it there)."""

    def __post_init__(self) -> None:
        b = self.sde.shape[0]
        if self.parent is None:
            self.parent = torch.arange(b)
        if self.branch_at is None:
            self.branch_at = torch.zeros(b, dtype=torch.long)
        if self.stride is None:
            self.stride = torch.ones(b, dtype=torch.long)
        if self.noise_scale is None:
            self.noise_scale = torch.ones(self.sde.shape, dtype=torch.float64)

    @property
    def num_prompts(self) -> int:
        return self.sde.shape[0] // self.group_size

    @property
    def shared_noise(self) -> bool:
        """Some rows share their initial noise (and a prefix) with another row."""
        return bool((self.parent != torch.arange(len(self.parent))).any())

    def trained_steps(self) -> list[tuple[int, int]]:
        """(trajectory, step) of every trained transition, in row-major order."""
        return [tuple(ix) for ix in self.train.nonzero().tolist()]

    def sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] long each: the row whose velocity row b uses at step j, and the row whose
        transition (x_j -> x_{j+1}) it takes. A row owns step j when both are itself."""
        b, t = self.sde.shape
        steps = torch.arange(t)
        src_v = torch.empty(b, t, dtype=torch.long)
        src_x = torch.empty(b, t, dtype=torch.long)
        for r, (p, at) in enumerate(zip(self.parent.tolist(), self.branch_at.tolist())):
            if p == r:
                src_v[r] = src_x[r] = r
            else:
                src_v[r] = torch.where(steps > at, r, src_v[p])
                src_x[r] = torch.where(steps >= at, r, src_x[p])
        return src_v, src_x

    def last_sde(self) -> torch.Tensor:
        """[B] long: each row's last SDE step (-1 for an ODE-only row)."""
        t = self.sde.shape[1]
        return torch.where(self.sde.any(1), t - 1 - self.sde.flip(1).float().argmax(1), -1)

    def skips(self) -> torch.Tensor:
        """[B, T] bool: row b holds its data prediction at step j instead of running the
        model. A row's ODE tail starts after its last SDE step (and, for a branch, where it
        leaves its parent) on the grid start, start + stride, ... of the table's steps: it
        calls the model at the grid nodes a whole stride from the end or more, and holds
        elsewhere (so a grid that misses sigma = 0 ends with its last called node's data
        prediction, as G2RPO's `sigma_schedule[s + 2::g]` does). A row whose velocity other
        rows take at j (a shared prefix) skips only where every one of them would."""
        b, t = self.sde.shape
        rows = torch.arange(b)
        start = torch.maximum(self.last_sde() + 1, torch.where(self.parent != rows, self.branch_at, 0))
        steps = torch.arange(t)[None]
        off = steps - start[:, None]
        stride = self.stride[:, None]
        own = (off > 0) & ((off % stride != 0) | (steps + stride > t))
        src_v, _ = self.sources()
        needed = torch.zeros(b, t).scatter_add_(0, src_v, (~own).float()) > 0
        return own & ~needed & (src_v == rows[:, None])

    def forward_rows(self) -> torch.Tensor:
        """[B, T] bool: which rows run a transformer forward at each step (a re-gridded tail's
        calls counted in its first len(tail) - 1 columns)."""
        src_v, _ = self.sources()
        rows = (src_v == torch.arange(len(src_v))[:, None]) & ~self.skips()
        if self.tail_from is not None:
            rows[:, self.tail_from :] = False
            rows[:, self.tail_from : self.tail_from + len(self.tail) - 1] = True
        return rows

    def rows(self, lo: int, hi: int) -> Plan:
        """The plan of rows lo .. hi - 1 alone (a chunk of a rollout), as a plan of its own:
        rows renumbered from 0. Every row's parent must lie in the range (a shared prefix is
        never split), and the range must hold whole groups or a divisor of one."""
        b = self.sde.shape[0]
        if not 0 <= lo < hi <= b:
            raise ValueError(f"plan rows {lo}..{hi - 1} are outside its {b} rows")
        parent = self.parent[lo:hi]
        if bool((parent < lo).any()):
            row = lo + int((parent < lo).nonzero()[0])
            raise ValueError(
                f"row {row} shares its prefix with row {int(self.parent[row])}, outside rows {lo}..{hi - 1}"
            )
        size = hi - lo
        g = self.group_size if size % self.group_size == 0 else size
        if self.group_size % g or lo % g:
            raise ValueError(f"rows {lo}..{hi - 1} split the plan's groups of {self.group_size} unevenly")
        cut = {f.name: getattr(self, f.name) for f in fields(self)}
        cut = {k: v[lo:hi] if torch.is_tensor(v) else v for k, v in cut.items()}
        cut["parent"] = parent - lo
        cut["group_size"] = g
        return type(self)(**cut)

    def check(self, table: StepTable) -> None:
        """Invariants every plan satisfies, whatever the algorithm."""
        b, t = self.sde.shape
        if t != table.num_steps or b % self.group_size:
            raise ValueError(
                f"plan shape {tuple(self.sde.shape)} does not fit {table.num_steps} steps, G={self.group_size}"
            )
        if (self.train & ~self.sde).any():
            raise ValueError("plan trains a transition that is not stochastic")
        if (self.weight[~self.train] != 0).any() or (self.weight[self.train] <= 0).any():
            raise ValueError("plan weights must be positive exactly on trained transitions")
        zero = self.sde & (table.step_std <= 0).unsqueeze(0)
        if zero.any():
            raise ValueError(f"plan makes a step with zero noise stochastic (step {int(zero.nonzero()[0, 1])})")
        rows = torch.arange(b)
        if self.parent.shape != (b,) or self.branch_at.shape != (b,):
            raise ValueError(f"plan parent and branch_at must have shape ({b},)")
        if (self.parent > rows).any() or (self.parent < 0).any():
            raise ValueError("plan rows must branch from an earlier row (parent[b] <= b)")
        child = self.parent != rows
        if ((self.branch_at[child] < 0) | (self.branch_at[child] >= t)).any():
            raise ValueError(f"plan branches outside the {t}-step schedule")
        _, src_x = self.sources()
        shared = src_x != rows[:, None]
        if (self.train & shared).any():
            raise ValueError("plan trains a transition inside a prefix the row shares with its parent")
        if (self.sde != self.sde.gather(0, src_x)).any():
            raise ValueError("plan gives a shared prefix steps of another kind (SDE/ODE) than its owner's")
        if self.group is not None and self.group.shape != self.sde.shape:
            raise ValueError(f"plan group must have shape {tuple(self.sde.shape)}")
        if self.stride.shape != (b,) or (self.stride < 1).any():
            raise ValueError(f"plan stride must have shape ({b},) and values >= 1")
        if self.noise_scale.shape != (b, t) or not bool((self.noise_scale > 0).all()):
            raise ValueError(f"plan noise_scale must have shape ({b}, {t}) and values > 0")
        if (self.tail is None) != (self.tail_from is None):
            raise ValueError("plan tail and tail_from go together")
        if self.tail is not None:
            self._check_tail(table, src_x)

    def _check_tail(self, table: StepTable, src_x: torch.Tensor) -> None:
        """A re-gridded tail: from the table's sigma at tail_from, strictly down to 0, after every
        row's SDE steps, in rows that compute their own steps there, with no strided tail."""
        b, t = self.sde.shape
        k, nodes = self.tail_from, torch.tensor(self.tail, dtype=torch.float64)
        if not 0 < k <= t or len(nodes) < 1 or len(nodes) - 1 > t - k:
            raise ValueError(f"plan tail of {len(nodes)} nodes from step {k} does not fit the {t}-step schedule")
        first = float(table.sigma[k]) if k < t else 0.0
        if abs(float(nodes[0]) - first) > 1e-6 or (len(nodes) > 1 and float(nodes[-1]) != 0.0):
            raise ValueError(f"plan tail must run from the table's sigma {first:.6g} at step {k} to 0")
        if bool((nodes[1:] >= nodes[:-1]).any()):
            raise ValueError("plan tail sigmas must decrease")
        if bool(self.sde[:, k:].any()) or bool(self.train[:, k:].any()):
            raise ValueError(f"plan tail starts at step {k}, before a row's last SDE step")
        if bool((src_x[:, k - 1 :] != torch.arange(b)[:, None]).any()) or bool((self.stride != 1).any()):
            raise ValueError("plan tail needs every row on its own steps from the tail on, stride 1")


class Items:
    """Training items, N of them: each belongs to a trajectory (`traj`) and a sampling step
    (`step`) and has a raw weight; a dataclass subclass adds its own tensors [N, ...]."""

    traj: torch.Tensor
    """[N] trajectory (row) index b = p * G + g."""
    step: torch.Tensor
    """[N] step index k (its noise level is the table's sigma[k] unless the items say otherwise)."""
    weight: torch.Tensor
    """[N] raw weight (normalised to mean 1 over the optimizer batch by the update)."""

    def __len__(self) -> int:
        return len(self.traj)

    def select(self, idx: torch.Tensor):
        """The items at `idx` (every [N, ...] field indexed; None stays None)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(**{k: v if v is None or not torch.is_tensor(v) else v[idx] for k, v in values.items()})


@dataclass
class Transitions(Items):
    """The trained SDE transitions of a rollout, in (trajectory, step) order."""

    traj: torch.Tensor
    step: torch.Tensor
    x: torch.Tensor
    """[N, C, F, H, W] x_k."""
    x_next: torch.Tensor
    """[N, C, F, H, W] x_{k+1} as sampled."""
    logp_old: torch.Tensor
    """[N] float32 log-prob of the transition under the sampling policy."""
    weight: torch.Tensor
    v_sample: torch.Tensor | None = None
    """[N, ...] the sampling policy's velocity at x_k (kept only for an objective that asks)."""


@dataclass
class ReNoised(Items):
    """Clean samples of a rollout re-noised at a schedule noise level (forward-process objectives):
    x_t = (1 - t) x0 + t eps."""

    traj: torch.Tensor
    step: torch.Tensor
    """[N] the sampling step whose noise level t = sigma_k the item was re-noised at."""
    t: torch.Tensor
    """[N] float64 noise level."""
    x_t: torch.Tensor
    """[N, C, F, H, W] the re-noised sample."""
    x0: torch.Tensor
    """[N, C, F, H, W] the clean sample it came from."""
    weight: torch.Tensor
    logp_old: torch.Tensor | None = None
    """[N] the objective's own log-likelihood surrogate under the rollout policy, if it has one."""
    aux: torch.Tensor | None = None
    """[N, ...] what the objective recorded per item when it made them (e.g. v_old, eps)."""


@dataclass
class RolloutResult:
    latents: torch.Tensor
    """[B, C, F, H, W] final latents x_T (sigma = 0)."""
    transitions: Transitions
    nfe: int
    """Transformer forward passes run (a CFG forward counts twice)."""
    logp: torch.Tensor | None = None
    """[B, T] log-prob of each row's transition at each SDE step (0 at ODE steps)."""
    scoring: object | None = None
    """The rewards of these videos as they are being computed (grpo_zoo.rewards.Scoring: a remote
    reward scores a chunk of the rollout while the next one samples); None: score after it."""

    @staticmethod
    def cat(parts: list[RolloutResult], rows: list[int]) -> RolloutResult:
        """One result of consecutive chunks of a rollout, chunk i holding `rows[i]` rows."""
        if len(parts) == 1:
            return parts[0]
        offsets = torch.tensor([0, *rows]).cumsum(0)[:-1].tolist()
        trs = [p.transitions for p in parts]
        merged = {}
        for f in fields(Transitions):
            values = [getattr(t, f.name) for t in trs]
            if f.name == "traj":
                values = [v + off for v, off in zip(values, offsets)]
            merged[f.name] = None if values[0] is None else torch.cat(values)
        logp = None if parts[0].logp is None else torch.cat([p.logp for p in parts])
        return RolloutResult(
            latents=torch.cat([p.latents for p in parts]), transitions=Transitions(**merged),
            nfe=sum(p.nfe for p in parts), logp=logp,
        )  # fmt: skip


@dataclass
class Planned:
    """The plan step's result: this rank's prompts, their embeddings per row, the plan."""

    prompts: list[str]
    emb: torch.Tensor
    ctx: PlanContext
    plan: Plan


@dataclass
class Prepared:
    """The advantages step's result: the items to train, their advantages, the forwards spent."""

    items: Items
    adv: torch.Tensor
    made: int


@dataclass(kw_only=True)
class AdvantageContext(Groups):
    """What an algorithm and its objective know once the rollout is scored, on one rank.

    Built once per iteration by the trainer after scoring; nothing mutates it after."""

    iteration: int
    prompts: list[str]
    """This rank's P prompts."""
    group_size: int
    """G: rollouts per prompt; row b = p * G + g."""
    table: StepTable
    plan: Plan
    """This rank's plan of the iteration."""
    reward: str
    """The name of the training reward among `rewards`."""
    rewards: dict[str, torch.Tensor]
    """Every per-video entry the reward returned (the training reward and its components),
    [P, G] float32 each: this rank's groups."""
    batch_rewards: dict[str, torch.Tensor]
    """The same entries for the whole optimizer batch (all ranks), [P_all, G]: for batch-wide
    statistics (`global_std`); this rank's groups are rows rank * P .. (rank + 1) * P - 1."""
    logp: torch.Tensor | None = None
    """[B, T] float32: this rank's log-prob of each row's transition at each SDE step under
    the sampling policy (0 at ODE steps; a step a row shares with its parent carries the parent's)."""
    global_std: bool = False
    """Advantages divide by the whole batch's reward std instead of the group's."""
    adv_clip: float = 5.0
    """Advantages are clipped to +-adv_clip."""
    adv_std: str = "population"
    """The std advantages divide by: population (n) or unbiased (n - 1)."""
    adv_eps: float = 1e-4
    """Added to the std before dividing."""
    rank: int = 0
    world: int = 1

    @classmethod
    def of(
        cls,
        ctx: PlanContext,
        plan: Plan,
        rewards: torch.Tensor | dict[str, torch.Tensor],
        reward: str = "reward",
        logp: torch.Tensor | None = None,
        **kw,
    ) -> AdvantageContext:
        """The context of a planned iteration scored with `rewards`, [P_all, G] for the whole
        batch (or a dict of such entries, `reward` naming the training one); this rank's
        groups are sliced from it (tools and tests)."""
        batch = rewards if isinstance(rewards, dict) else {reward: rewards}
        p = ctx.num_prompts
        local = {k: v[ctx.rank * p : (ctx.rank + 1) * p] for k, v in batch.items()}
        return cls(
            iteration=ctx.iteration, prompts=ctx.prompts, group_size=ctx.group_size, table=ctx.table, plan=plan,
            reward=reward, rewards=local, batch_rewards=batch, logp=logp, rank=ctx.rank, world=ctx.world, **kw,
        )  # fmt: skip

    @property
    def scores(self) -> torch.Tensor:
        """[P, G] this rank's training reward."""
        return self.rewards[self.reward]


@dataclass
class Batch:
    """One micro-batch as an objective's loss sees it."""

    items: Items
    """The micro-batch's items (Transitions, ReNoised, or an objective's own Items)."""
    adv: torch.Tensor
    """[n] advantages ([n, K] for an objective that takes one column per reward)."""
    weight: torch.Tensor
    """[n] weights normalised to mean 1 over the optimizer batch."""
    emb: torch.Tensor
    """[n, L, D] prompt embeddings of the items."""
    ctx: AdvantageContext | None = None
    """The iteration's scored context (rewards, group structure)."""


@dataclass
class Terms:
    """What an objective computed for a micro-batch."""

    per: torch.Tensor
    """[n] per-item loss, with grad (summed, then divided by the minibatch size)."""
    stats: dict[str, torch.Tensor]
    """[n] detached per-item statistics, none required. `policy` and `kl` are logged as
    loss/policy and loss/kl; `ratio` as stats/ratio_mean and stats/ratio_max_dev; any other
    name as stats/<name> (its mean over the items)."""
    velocity: torch.Tensor | None = None
    """The velocity the loss flows through (grad retained), for per-timestep gradient sizes."""
    extra_forwards: int = 0
    """Forwards run without a backward (a reference model, say), in samples."""
