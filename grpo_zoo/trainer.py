"""The shared training loop: every algorithm runs through exactly this code.

One iteration: P prompts x G rollouts -> algorithm.plan(ctx) -> rollout (keeping what the
objective trains on) -> reward -> advantages (the algorithm's, GRPO's group-relative by
default) -> the objective's loss over minibatches (grpo_zoo/update.py) -> engine steps ->
meter -> one metrics row. The loop never looks at the algorithm's name.

This file is the wiring and the loop; the pieces live beside it: preflight.py (tables and
checks, built once), update.py (minibatches through an objective, typed stats),
objectives.py (the losses), evaluation.py, checkpoint.py, ema.py, seeding.py.

Ranks: each rank owns P / world prompt groups (whole groups, formed explicitly from the
iteration's seed, never from sampler timing); rewards are gathered so advantages (and
`global_std`) see the whole batch; weights are normalised over all ranks.

Randomness: every iteration's generators are seeded from (seed, step, rank, purpose), so
a resumed run draws exactly what an uninterrupted one would; an algorithm's own state is
saved with every checkpoint.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from grpo_zoo import objectives, rewards
from grpo_zoo.advantages import zero_std_ratio
from grpo_zoo.algorithm import PlanContext
from grpo_zoo.checkpoint import load_newest, save
from grpo_zoo.config import to_dict
from grpo_zoo.ema import EMA
from grpo_zoo.evaluation import evaluate
from grpo_zoo.meter import Meter, measure_flops
from grpo_zoo.preflight import check, preflight
from grpo_zoo.rollout import rollout
from grpo_zoo.run_config import RunConfig
from grpo_zoo.runs import RunDir, RunLock, Terminated, exit_signals
from grpo_zoo.seeding import generator, rank_from_env
from grpo_zoo.update import NonFiniteError, update

__all__ = ["Hook", "NonFiniteError", "StopRun", "Trainer", "check"]


class StopRun(Exception):
    """Raised by a hook to end a run early but cleanly (e.g. a pruned tuning trial)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class Hook:
    """Watches a run from inside the loop (tuning reports, early stopping). Hooks may call
    `trainer.evaluate_and_log()` and raise StopRun; they never change what is trained."""

    def on_start(self, trainer: Trainer) -> None:
        """Once, before the first iteration of this process (after any resume)."""

    def on_eval(self, trainer: Trainer, row: dict) -> None:
        """After every logged evaluation (including the one before the first step)."""

    def after_iteration(self, trainer: Trainer) -> None:
        """After every iteration, its row and any scheduled evaluation logged."""


class Trainer:
    def __init__(self, cfg: RunConfig, progress: bool = True, hooks: list[Hook] | None = None):
        pre = preflight(cfg)
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        self.cfg = cfg
        self.progress = progress
        self.hooks = list(hooks or [])
        self.algorithm, self.table, self.eval_table = pre.algorithm, pre.table, pre.eval_table
        self.reward_fn, self.train_prompts, self.eval_prompts = pre.reward_fn, pre.train_prompts, pre.eval_prompts
        self.run = RunDir(cfg.run_dir)
        self.run.check_config(to_dict(cfg))  # before any compute; one writer from here on
        self.lock = RunLock(cfg.run_dir).acquire() if rank_from_env() == 0 else None  # rank 0 writes

        from grpo_zoo.models import load_policy

        torch.manual_seed(cfg.seed)
        self.policy = load_policy(cfg.model)
        if cfg.model.lora_rank == 0 and cfg.optim.beta > 0:
            self.policy.freeze_reference()
        flops = self._measure_flops()

        from grpo_zoo.engine import Engine

        self.engine = Engine(self.policy.net, cfg.engine, cfg.optim)
        self.policy.net = self.engine.ds
        self.policy.to(self.engine.device)
        self.rank, self.world = self.engine.rank, self.engine.world_size
        self.device, self.dtype = self.engine.device, self.engine.dtype
        self.meter = Meter(self.world, flops)
        self.ema = EMA(self._trainable, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.null_emb = self.policy.encode([""]).to(self.device) if cfg.sampling.guidance != 1.0 else None
        self.cfg_mult = 2 if self.null_emb is not None else 1
        self.objective = objectives.get(self.algorithm.objective)(
            cfg.algorithm, cfg.optim, cfg.sampling, self.table, self.policy, self.null_emb, self.dtype, self.device
        )
        self.step = 0
        self.last_eval: tuple[int, dict] | None = None
        self.last_videos = None
        self._resume()

    # -- setup -------------------------------------------------------------------------
    def _measure_flops(self) -> tuple[float, float]:
        """FLOPs of one sample's transformer forward and backward, as trained."""
        x = torch.zeros(1, *self.policy.latent_shape)
        emb = self.policy.encode([self.train_prompts[0]])
        fwd, bwd = measure_flops(lambda: self.policy.raw_velocity(x, torch.ones(1), emb), backward=True)
        for p in self.policy.parameters():
            p.grad = None
        return float(fwd), float(bwd)

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.engine.module.named_parameters() if p.requires_grad}

    def _resume(self) -> None:
        """Load the newest readable checkpoint and keep exactly the metrics rows written before it."""
        state, name, fallback = load_newest(self.run, self.engine, self.rank, self.world)
        keep_rows = None
        if state is not None:
            self.step = state["step"]
            self.meter.load_state_dict(state["meter"])
            if self.ema is not None:
                self.ema.shadow = state["ema"]
            self.algorithm.load_state_dict(state.get("algorithm") or {})
            self.objective.load_state_dict(state.get("objective") or {})
            torch.set_rng_state(state["torch_rng"])
            self.last_eval = state.get("last_eval")
            keep_rows = state.get("metrics_rows")
        if self.rank == 0:
            self.run.resume_metrics(keep_rows, self.step, name)
            device = str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)
            self.run.start(to_dict(self.cfg), self.world, device, resume=state is not None, fallback=fallback)
        self.engine.barrier()

    # -- one iteration -------------------------------------------------------------------
    def _prompts(self, step: int) -> list[str]:
        p_total = self.cfg.data.prompts_per_step
        idx = torch.randint(len(self.train_prompts), (p_total,), generator=generator(self.cfg.seed, step, "prompts"))
        local = p_total // self.world
        return [self.train_prompts[i] for i in idx[self.rank * local : (self.rank + 1) * local]]

    def plan_context(self, step: int, prompts: list[str]) -> PlanContext:
        cfg = self.cfg
        return PlanContext(
            iteration=step,
            prompts=prompts,
            group_size=cfg.data.group_size,
            table=self.table,
            gen=generator(cfg.seed, step, self.rank, "plan"),
            global_std=cfg.optim.global_std,
            adv_clip=cfg.optim.adv_clip,
            rank=self.rank,
            world=self.world,
            ode_stride=cfg.sampling.ode_stride,
        )

    def iteration(self) -> dict:
        cfg, step, g = self.cfg, self.step, self.cfg.data.group_size
        prompts = self._prompts(step)
        texts = [p for p in prompts for _ in range(g)]
        emb = self.policy.encode(prompts).to(self.device).repeat_interleave(g, 0)
        ctx = self.plan_context(step, prompts)
        plan = self.algorithm.plan(ctx)
        plan.check(self.table)
        self.policy.eval()
        with self.objective.sampling_weights():  # the policy's own weights, or the objective's old policy
            ro = rollout(
                self.policy,
                emb,
                self.null_emb,
                plan,
                self.table,
                cfg.sampling.guidance,
                generator(cfg.seed, step, self.rank, "rollout"),
                dtype=self.dtype,
                device=self.device,
                keep_velocity=self.objective.needs_sampling_velocity,
                solver=cfg.sampling.ode_solver,
            )
        scores = rewards.score(self.reward_fn, self.policy.decode, ro.latents, texts, g)
        r_local = scores[cfg.reward.name].float().cpu()
        if not torch.isfinite(r_local).all():
            raise NonFiniteError(f"non-finite reward at step {step}")
        for entry in self.algorithm.reward_entries():  # rewards the advantages read must be finite too
            if entry in scores and not torch.isfinite(scores[entry].float()).all():
                raise NonFiniteError(f"non-finite reward entry {entry!r} at step {step}")
        per_video = {k: v for k, v in scores.items() if v.numel() == len(texts)}  # [B] entries (others: not gathered)
        ctx.scores = {
            k: self.engine.all_gather_cat(v.float().cpu().view(len(prompts), g)) for k, v in per_video.items()
        }
        ctx.logp = ro.logp
        r_all = ctx.scores[cfg.reward.name]
        items, made = self.objective.items(ro, emb, generator(cfg.seed, step, self.rank, "items"))
        adv = self.algorithm.advantages(ctx, plan, items.traj, items.step, r_all)
        keep = self.algorithm.keep(ctx, plan, items.traj, items.step, adv)
        if keep is not None:  # pruned by advantage: neither forward nor backward
            items, adv = items.select(keep), adv[keep]
        comp = self.engine.all_reduce_sum(torch.tensor([ro.nfe, made], dtype=torch.float64))
        self.meter.forward(float(comp[0]))
        self.meter.forward(float(comp[1]), self.objective.cfg_mult)  # the objective's forwards, its CFG

        self.policy.train()
        stats = update(
            self.objective,
            self.engine,
            items,
            adv,
            emb,
            cfg.optim,
            generator(cfg.seed, step, self.rank, "minibatches"),
            on_step=self.ema.update if self.ema is not None else None,
            step=step,
        )
        self.meter.forward(stats.forwards + stats.extra_forwards, self.objective.cfg_mult)
        self.meter.backward(stats.forwards, self.objective.cfg_mult)
        row = {"kind": "train", "reward/mean": float(r_all.mean()), "reward/std": float(r_all.std())}
        for name, values in ctx.scores.items():
            if name != cfg.reward.name:
                row[f"reward/{name}"] = float(values.mean())
        row["stats/zero_std_ratio"] = zero_std_ratio(r_all)
        row["stats/transitions"] = float(self.engine.all_reduce_sum(torch.tensor([float(len(items))]))[0])
        row.update(stats.row())
        return row

    # -- evaluation and checkpoints ------------------------------------------------------------
    def evaluate(self) -> dict:
        row, (videos, prompts) = evaluate(self)
        if self.cfg.save_eval_videos:
            from grpo_zoo.media import save_grid, to_uint8

            if self.rank == 0:
                save_grid(videos[:16], self.run.path / "eval" / f"step-{self.step:06d}.png", prompts[:16])
            self.last_videos = (to_uint8(videos.cpu()), prompts)  # kept on the host until the run ends
        return row

    def param_checksum(self) -> float:
        """A number that differs when any trainable weight differs (to compare ranks)."""
        import contextlib

        import deepspeed

        params = list(self._trainable().values())
        total = torch.zeros((), dtype=torch.float64)
        gather = deepspeed.zero.GatheredParameters(params) if self.engine.zero_stage == 3 else contextlib.nullcontext()
        with torch.no_grad(), gather:
            for i, p in enumerate(params):
                w = p.detach().double().flatten().cpu()
                total += (w * torch.linspace(1, 2, len(w), dtype=torch.float64)).sum() * (i + 1)
        return float(total)

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "meter": self.meter.state_dict(),
            "ema": self.ema.shadow if self.ema is not None else None,
            "algorithm": self.algorithm.state_dict(),
            "objective": self.objective.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "last_eval": self.last_eval,  # a resumed run does not repeat a finished evaluation
            "metrics_rows": self.run.rows_written if self.rank == 0 else None,  # the rows a resume keeps
        }
        save(self.run, self.engine, self.step, self.rank, state)

    def _write_eval_videos(self) -> None:
        """The last evaluation's videos as mp4 files named as VBench expects (every rank its own)."""
        if self.last_videos is None:
            return
        from grpo_zoo.vbench import save_eval_videos

        frames, prompts = self.last_videos
        local = self.cfg.data.eval_samples // self.world
        save_eval_videos(frames, prompts, self.rank * local, len(self.eval_prompts), self.run.path / "eval" / "videos")

    def evaluate_and_log(self) -> dict:
        row = self.evaluate()
        self._log(row)
        if not math.isfinite(row["eval/reward"]):
            raise NonFiniteError(f"non-finite eval reward at step {self.step}")
        self.last_eval = (self.step, row)
        for hook in self.hooks:
            hook.on_eval(self, row)
        return row

    def budget_fraction(self) -> float:
        """How much of the budget is spent (the largest fraction over the budgets set)."""
        return self.meter.fraction(self.cfg.budget, self.step)

    def _log(self, row: dict) -> None:
        self.meter.total.device_seconds = self.engine.broadcast_float(self.meter.total.device_seconds)
        full = {"step": self.step, **row, **self.meter.total.as_metrics()}
        if self.rank == 0:
            self.run.log(full)

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> dict:
        with exit_signals():  # TERM / INT: status `terminated` / `interrupted`, then re-raised
            return self._train()

    def _train(self) -> dict:
        cfg = self.cfg
        try:
            bar = tqdm(
                total=cfg.budget.steps,
                initial=self.step,
                desc=f"{cfg.algorithm.name}",
                disable=not self.progress or self.rank != 0,
                dynamic_ncols=True,
            )
            self.meter.pause()
            status = "completed"
            try:
                for hook in self.hooks:
                    hook.on_start(self)
                if self.step == 0:
                    self.evaluate_and_log()
                    self.meter.pause()
                while (reason := self.meter.exhausted(cfg.budget, self.step)) is None:
                    row = self.iteration()
                    self.step += 1
                    self.meter.tick()
                    self._log(row)
                    bar.update(1)
                    bar.set_postfix(reward=f"{row['reward/mean']:.3f}")
                    due_eval = cfg.data.eval_every > 0 and self.step % cfg.data.eval_every == 0
                    if due_eval:
                        self.evaluate_and_log()
                    for hook in self.hooks:
                        hook.after_iteration(self)
                    if self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    self.meter.pause()  # evaluation and checkpoint writing are not training time
            except StopRun as stop:  # a hook ended the run: keep its last evaluation
                status, reason = stop.status, stop.reason
            bar.close()
            if self.last_eval is None or (status == "completed" and self.last_eval[0] != self.step):
                self.evaluate_and_log()
            self._write_eval_videos()
            last_eval = self.last_eval[1]
            if self.step % cfg.checkpoint_every != 0:
                self.save_checkpoint()
            checksums = self.engine.all_gather_cat(torch.tensor([self.param_checksum()], dtype=torch.float64))
            summary = {
                "reason": reason,
                "ranks_in_sync": bool((checksums == checksums[0]).all()),
                "param_checksums": checksums.tolist(),
                "step": self.step,
                "eval/reward": last_eval["eval/reward"],
                **self.meter.total.as_metrics(),
            }
            if self.rank == 0:
                self.run.complete(summary, status=status)
            return {"status": status, **summary}
        except NonFiniteError as err:
            if self.rank == 0:
                self.run.set_status("diverged", step=self.step, reason=str(err))
            raise
        except (Terminated, KeyboardInterrupt, SystemExit) as err:  # ended from outside: resumable
            if self.rank == 0:
                status = getattr(err, "status", "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated")
                self.run.set_status(status, step=self.step, reason=f"{type(err).__name__}: {err}")
            raise
        except BaseException as err:  # a crash is recorded, then raised
            if self.rank == 0:
                self.run.set_status("failed", step=self.step, reason=f"{type(err).__name__}: {err}")
            raise
        finally:
            self.engine.close()
            if self.lock is not None:
                self.lock.release()
