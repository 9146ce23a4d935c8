"""The shared training loop: every algorithm runs through exactly this code.

One iteration is five named steps, each returning a typed result:
    plan       -> Planned           algorithm.plan(ctx) for this rank's prompts
    rollout    -> RolloutResult     the plan sampled (keeping what the objective trains on)
    score      -> AdvantageContext  rewards gathered, this rank's sliced; algorithm.observe(ctx)
    advantages -> Prepared          the objective's items, the algorithm's advantages and pruning
    update     -> UpdateStats       minibatches through the objective (grpo_zoo/training/update.py)
then the meter and one metrics row. The loop never looks at the algorithm's name.

The loop around the iterations is loop.py (RunLoop); beside them: preflight.py, update.py,
evaluation.py, checkpoint.py, ending.py (status on every way out); the data types in
grpo_zoo/core/contract.py. Each rank owns P / world whole prompt groups; rewards are gathered so advantages see the whole batch. Every generator is
seeded from (seed, step, rank, purpose), so a resumed run draws exactly what an
uninterrupted one would; algorithm and objective state are saved with every checkpoint.
"""

from __future__ import annotations

import torch

from grpo_zoo import rewards
from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import to_dict
from grpo_zoo.core import objective as objectives
from grpo_zoo.core.advantages import aggregate, zero_std_ratio
from grpo_zoo.core.contract import AdvantageContext, PlanContext, Planned, Prepared, RolloutResult
from grpo_zoo.core.ema import EMA
from grpo_zoo.cost.flops import run_flops
from grpo_zoo.cost.meter import Meter
from grpo_zoo.cost.micro_batch import rollout_micro_batch
from grpo_zoo.errors import NonFiniteError
from grpo_zoo.models.base import cfg_multiplier
from grpo_zoo.runs import RunDir, RunLock
from grpo_zoo.training.checkpoint import load_newest
from grpo_zoo.training.hooks import Hook, StopRun
from grpo_zoo.training.loop import RunLoop
from grpo_zoo.training.preflight import check, preflight
from grpo_zoo.training.progress import Progress
from grpo_zoo.training.rollout import rollout
from grpo_zoo.training.seeding import generator, rank_from_env
from grpo_zoo.training.update import UpdateStats, update

__all__ = ["Hook", "NonFiniteError", "StopRun", "Trainer", "check"]


class Trainer(RunLoop):
    """Builds everything a run needs (once) and runs one iteration; the loop around it is RunLoop's."""

    def __init__(self, cfg: RunConfig, progress: bool = True, hooks: list[Hook] | None = None):
        pre = preflight(cfg)
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        self.cfg, self.progress, self.hooks = cfg, progress, list(hooks or [])
        self.algorithm, self.table, self.eval_table = pre.algorithm, pre.table, pre.eval_table
        self.reward_fn, self.train_prompts, self.eval_prompts = pre.reward_fn, pre.train_prompts, pre.eval_prompts
        self.run = RunDir(cfg.run_dir)
        self.run.check_config(to_dict(cfg))  # before any compute; one writer from here on
        self.report = Progress(cfg, rank_from_env(), progress)
        self.lock = RunLock(cfg.run_dir).acquire() if rank_from_env() == 0 else None  # rank 0 writes

        from grpo_zoo.models import load_policy
        from grpo_zoo.training.engine import Engine, local_device

        torch.manual_seed(cfg.seed)
        precision = torch.bfloat16 if cfg.engine.precision == "bf16" else torch.float32  # what DeepSpeed casts to
        self.policy = load_policy(cfg.model, precision, local_device(cfg.engine))
        objective_cls = objectives.get(self.algorithm.objective)
        if cfg.model.lora_rank == 0 and objective_cls.needs_reference(cfg):
            self.policy.freeze_reference()
        flops = run_flops(cfg.model, self.policy, self.train_prompts[0])  # from shapes for wan: no real pass
        self.engine = Engine(self.policy.net, cfg.engine, cfg.optim)
        self.policy.net = self.engine.ds
        self.policy.to(self.engine.device)
        self.rank, self.world = self.engine.rank, self.engine.world_size
        self.device, self.dtype = self.engine.device, self.engine.dtype
        # the prompt set is fixed: a backend with a large text encoder encodes it once and frees it
        self.policy.fix_prompts([*self.train_prompts, *self.eval_prompts, ""])
        self.micro_batch = rollout_micro_batch(cfg, self.world, self.device)
        self.meter = Meter(self.world, flops)
        self.ema = (
            EMA(self._trainable, cfg.optim.ema_decay, self.engine.gathered, cfg.optim.ema_every)
            if cfg.optim.ema_decay > 0
            else None
        )
        guided = cfg_multiplier(cfg.sampling.guidance) > 1
        self.null_emb = self.policy.encode([""]).to(self.device) if guided else None
        runtime = objectives.Runtime(self.policy, self.null_emb, self.dtype, self.device)
        self.objective = objective_cls(cfg.algorithm, cfg.optim, cfg.sampling, self.table, runtime)
        self.step, self.last_eval, self.last_videos = 0, None, None
        parts = {"meter": self.meter, "ema": self.ema, "algorithm": self.algorithm, "objective": self.objective}
        self.stateful = {k: v for k, v in parts.items() if v is not None}  # saved with every checkpoint
        self._resume()

    # -- setup -------------------------------------------------------------------------
    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.engine.module.named_parameters() if p.requires_grad}

    def _resume(self) -> None:
        """Load the newest readable checkpoint and keep exactly the metrics rows written before it."""
        state, name, fallback = load_newest(self.run, self.engine, self.rank, self.world)
        keep_rows = None
        if state is not None:
            self.step = state["step"]
            for key, part in self.stateful.items():
                part.load_state_dict(state.get(key) or {})
            torch.set_rng_state(state["torch_rng"])
            self.last_eval = state.get("last_eval")
            keep_rows = state.get("metrics_rows")
        if self.rank == 0:
            self.run.resume_metrics(keep_rows, self.step, name)
            device = str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)
            self.run.start(to_dict(self.cfg), self.world, device, resume=state is not None, fallback=fallback)
            self.report.start(self.step, f"{self.world} x {device}")  # every check passed: the first line
        self.engine.barrier()

    # -- one iteration, in named steps ---------------------------------------------------------
    def plan_step(self) -> Planned:
        cfg, step, g = self.cfg, self.step, self.cfg.data.group_size
        idx = torch.randint(
            len(self.train_prompts), (cfg.data.prompts_per_step,), generator=generator(cfg.seed, step, "prompts")
        )
        local = cfg.data.prompts_per_step // self.world
        prompts = [self.train_prompts[i] for i in idx[self.rank * local : (self.rank + 1) * local]]
        emb = self.policy.encode(prompts).to(self.device).repeat_interleave(g, 0)
        ctx = PlanContext(
            iteration=step, prompts=prompts, group_size=g, table=self.table, gen=generator(cfg.seed, step, self.rank, "plan"),
            rank=self.rank, world=self.world, ode_stride=cfg.sampling.ode_stride, shift=cfg.sampling.shift,
        )  # fmt: skip
        plan = self.algorithm.plan(ctx)
        plan.check(self.table)
        return Planned(prompts, emb, ctx, plan)

    def rollout_step(self, p: Planned) -> RolloutResult:
        """The plan sampled in `sampling.rollout_chunks` consecutive chunks; each chunk's videos go
        to the reward as soon as it is sampled (a remote one scores them during the next chunk)."""
        cfg, g = self.cfg, self.cfg.data.group_size
        chunks = cfg.sampling.rollout_chunks
        plan, rows = p.plan, len(p.plan.parent)
        size = rows // chunks
        texts = [q for q in p.prompts for _ in range(g)]
        scoring = rewards.Scoring(self.reward_fn, self.policy.decode, min(g, size))
        parts = []
        self.policy.eval()
        with self.objective.sampling_weights():  # the policy's own weights, or the objective's old policy
            for c, lo in enumerate(range(0, rows, size)):
                seed = (cfg.seed, self.step, self.rank, "rollout") + ((c,) if chunks > 1 else ())
                part = rollout(
                    self.policy, p.emb[lo : lo + size], self.null_emb, plan if chunks == 1 else plan.rows(lo, lo + size), self.table,
                    cfg.sampling.guidance, generator(*seed), dtype=self.dtype, device=self.device,
                    keep_velocity=self.objective.needs_sampling_velocity, solver=cfg.sampling.ode_solver,
                    micro_batch=self.micro_batch,
                )  # fmt: skip
                scoring.add(part.latents, texts[lo : lo + size])
                parts.append(part)
        ro = RolloutResult.cat(parts, [size] * chunks)
        ro.scoring = scoring
        return ro

    def score_step(self, p: Planned, ro: RolloutResult) -> AdvantageContext:
        cfg, g, name = self.cfg, self.cfg.data.group_size, self.cfg.reward.entry
        texts = [q for q in p.prompts for _ in range(g)]
        if ro.scoring is not None:
            scores = ro.scoring.result()
        else:
            scores = rewards.score(self.reward_fn, self.policy.decode, ro.latents, texts, g)
        checked = [name, *(cfg.reward.weights or ()), *self.algorithm.reward_entries()]  # what advantages read: finite
        for entry in checked:
            if entry in scores and not torch.isfinite(scores[entry].float()).all():
                what = "reward" if entry == name else f"reward entry {entry!r}"
                raise NonFiniteError(f"non-finite {what} at step {self.step}")
        local = {k: v.float().cpu().view(len(p.prompts), g) for k, v in scores.items() if v.numel() == len(texts)}
        ctx = AdvantageContext(
            iteration=self.step, prompts=p.prompts, group_size=g, table=self.table, plan=p.plan, reward=name,
            rewards=local, batch_rewards={k: self.engine.all_gather_cat(v) for k, v in local.items()}, logp=ro.logp,
            global_std=cfg.optim.global_std, adv_clip=cfg.optim.adv_clip, adv_std=cfg.optim.adv_std,
            adv_eps=cfg.optim.adv_eps, rank=self.rank, world=self.world,
        )  # fmt: skip
        self.algorithm.observe(ctx)
        return ctx

    def advantage_step(self, p: Planned, ro: RolloutResult, ctx: AdvantageContext) -> Prepared:
        items, made = self.objective.items(ro, ctx, p.emb, generator(self.cfg.seed, self.step, self.rank, "items"))
        r = self.cfg.reward
        adv = aggregate(self.algorithm, ctx, items.traj, items.step, r.weights, r.aggregate)
        served = self.policy.trains_at(items.t if hasattr(items, "t") else self.table.sigma[items.step])
        if not served.all():  # served by an expert that does not train (wan2.2-a14b's model.experts)
            items, adv = items.select(served), adv[served]
        keep = self.algorithm.keep(ctx, items.traj, items.step, adv if adv.dim() == 1 else adv.sum(-1))
        if keep is not None:  # pruned by advantage: neither forward nor backward
            items, adv = items.select(keep), adv[keep]
        return Prepared(items, adv, made)

    def update_step(self, p: Planned, ctx: AdvantageContext, prep: Prepared) -> UpdateStats:
        self.policy.train()
        on_step = self.ema.update if self.ema is not None else None
        gen = generator(self.cfg.seed, self.step, self.rank, "minibatches")
        return update(
            self.objective, self.engine, prep.items, prep.adv, p.emb, self.cfg.optim, gen, on_step, self.step, ctx
        )

    def iteration(self) -> dict:
        planned = self.plan_step()
        ro = self.rollout_step(planned)
        ctx = self.score_step(planned, ro)
        prep = self.advantage_step(planned, ro, ctx)
        comp = self.engine.all_reduce_sum(torch.tensor([ro.nfe, prep.made], dtype=torch.float64))
        self.meter.forward(float(comp[0]))
        self.meter.forward(float(comp[1]), self.objective.cfg_mult)  # the objective's forwards, its CFG
        stats = self.update_step(planned, ctx, prep)
        self.meter.forward(stats.forwards + stats.extra_forwards, self.objective.cfg_mult)
        self.meter.backward(stats.forwards, self.objective.cfg_mult)
        r_all = ctx.batch_rewards[ctx.reward]
        row = {"kind": "train", "reward/mean": float(r_all.mean()), "reward/std": float(r_all.std())}
        row.update({f"reward/{k}": float(v.mean()) for k, v in ctx.batch_rewards.items() if k != ctx.reward})
        row["stats/zero_std_ratio"] = zero_std_ratio(r_all)
        row["stats/transitions"] = float(self.engine.all_reduce_sum(torch.tensor([float(len(prep.items))]))[0])
        row.update(stats.row())
        return row
