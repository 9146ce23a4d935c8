"""The shared training loop: every algorithm runs through exactly this code.

One iteration: P prompts x G rollouts -> algorithm.plan -> rollout (keeping the trained
transitions) -> reward -> group advantages -> weighted PPO-clip (+ KL) on the trained
transitions -> engine step -> meter -> one metrics row. The loop never looks at the
algorithm's name: it asks the algorithm for a plan and uses the plan's weights.

Ranks: each rank owns P / world prompt groups (whole groups, formed explicitly from the
iteration's seed, never from sampler timing); rewards are gathered so advantages (and
`global_std`) see the whole batch; weights are normalised over all ranks.

Randomness: every iteration's generators are seeded from (seed, step, rank, purpose), so
a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from grpo_zoo import algorithm as algorithms
from grpo_zoo import rewards
from grpo_zoo.advantages import group_advantages, zero_std_ratio
from grpo_zoo.config import to_dict
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, sde_step, step_table, transition_mean
from grpo_zoo.loss import gaussian_kl, normalize_weights, ppo_clip
from grpo_zoo.meter import Meter, measure_flops
from grpo_zoo.prompts import load_prompts
from grpo_zoo.rollout import generate_ode, rollout
from grpo_zoo.run_config import RunConfig
from grpo_zoo.runs import RunDir, RunLock, Terminated, exit_signals, say


class NonFiniteError(RuntimeError):
    """A reward or loss was NaN or inf: reported, never trained on."""


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


def seed_of(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def rank_from_env() -> int:
    """This process's rank before torch.distributed is up: RANK (torchrun, deepspeed), else
    SLURM_PROCID in a multi-task srun job, else 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def world_size_from_env() -> int:
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if key in os.environ:
            return int(os.environ[key])
    return 1


def check(cfg: RunConfig) -> None:
    """Every check that needs no model weights and no compute (ConfigError on failure)."""
    world = world_size_from_env()
    alg = algorithms.build(cfg.algorithm)
    s = cfg.sampling
    table = step_table(make_sigmas(s.schedule, s.steps, s.shift), s.noise, s.noise_level)
    try:
        alg.check(table, cfg.data.group_size)
    except ConfigError as err:
        msg = str(err)
        raise ConfigError(msg if msg.startswith("group_size") else f"algorithm.{msg}") from None
    reward = rewards.get(cfg.reward.name, **cfg.reward.options)
    if cfg.data.prompts_per_step % world:
        raise ConfigError(
            f"data.prompts_per_step: {cfg.data.prompts_per_step} prompt groups do not split over {world} ranks; "
            f"use a multiple of {world}"
        )
    if cfg.data.eval_samples % world:
        raise ConfigError(f"data.eval_samples: {cfg.data.eval_samples} does not split over {world} ranks")
    if cfg.optim.ema_decay > 0 and cfg.engine.zero_stage == 3:
        raise ConfigError("optim.ema_decay: EMA needs whole parameters on each rank; use engine.zero_stage <= 2")
    if cfg.model.backend == "toy":
        from grpo_zoo.toy.model import resolve

        if not (resolve(cfg.model.path) / "transformer").is_dir():
            raise ConfigError(f"model.path: no toy checkpoint at {cfg.model.path!r} (use toy-base or a directory)")
    elif not Path(cfg.model.path).is_dir():
        raise ConfigError(f"model.path: no Wan model directory at {cfg.model.path!r}")
    load_prompts(cfg.data.prompts, "data.prompts")
    load_prompts(cfg.data.eval_prompts, "data.eval_prompts")
    if hasattr(reward, "check"):  # a reward service: reachable, checked last (it waits on the network)
        reward.check()


class Trainer:
    def __init__(self, cfg: RunConfig, progress: bool = True, hooks: list[Hook] | None = None):
        check(cfg)
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        self.cfg = cfg
        self.progress = progress
        self.hooks = list(hooks or [])
        s = cfg.sampling
        self.algorithm = algorithms.build(cfg.algorithm)
        self.table = step_table(make_sigmas(s.schedule, s.steps, s.shift), s.noise, s.noise_level)
        self.eval_table = step_table(make_sigmas(s.schedule, s.eval_steps, s.shift), s.noise, s.noise_level)
        self.reward_fn = rewards.get(cfg.reward.name, **cfg.reward.options)
        self.train_prompts = load_prompts(cfg.data.prompts)
        self.eval_prompts = load_prompts(cfg.data.eval_prompts)
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
        self.ema = self._trainable_copy() if cfg.optim.ema_decay > 0 else None
        self.null_emb = self.policy.encode([""]).to(self.device) if s.guidance != 1.0 else None
        self.cfg_mult = 2 if self.null_emb is not None else 1
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

    def _trainable_copy(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self._trainable().items()}

    def _resume(self) -> None:
        """Load the newest readable checkpoint (falling back past unreadable ones, said in one
        line) and keep exactly the metrics rows written before it (see runs.py)."""
        resolved = to_dict(self.cfg)
        candidates, newest = self.run.checkpoint_candidates()
        loaded, failures = None, []
        for path in candidates:
            try:
                state = torch.load(path / f"trainer_rank{self.rank}.pt", weights_only=False)
                self.engine.load(path)
                ok = 1.0
            except Exception as err:  # a damaged or partial checkpoint: try the one before
                failures.append(f"{path.name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}")
                ok = 0.0
            if float(self.engine.all_reduce_sum(torch.tensor([ok]))[0]) == self.world:
                loaded = path
                break
        fallback = None
        if newest is not None and (loaded is None or loaded.name != newest):
            missing = [] if newest in [p.name for p in candidates] else [f"{newest}: missing"]
            why = "; ".join(missing + failures)
            to = (
                f"resuming from {loaded.name}" if loaded is not None else "no readable checkpoint, starting from step 0"
            )
            fallback = f"checkpoint {newest} cannot be read ({why}); {to}"
            if self.rank == 0:
                say(f"warning: run_dir: {fallback}")
        keep_rows = None
        if loaded is not None:
            self.step = state["step"]
            self.meter.load_state_dict(state["meter"])
            if self.ema is not None:
                self.ema = state["ema"]
            torch.set_rng_state(state["torch_rng"])
            self.last_eval = state.get("last_eval")
            keep_rows = state.get("metrics_rows")
        if self.rank == 0:
            self.run.resume_metrics(keep_rows, self.step, loaded.name if loaded is not None else None)
            device = str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)
            self.run.start(resolved, self.world, device, resume=loaded is not None, fallback=fallback)
        self.engine.barrier()

    # -- one iteration -------------------------------------------------------------------
    def _prompts(self, step: int) -> list[str]:
        p_total = self.cfg.data.prompts_per_step
        idx = torch.randint(len(self.train_prompts), (p_total,), generator=generator(self.cfg.seed, step, "prompts"))
        local = p_total // self.world
        return [self.train_prompts[i] for i in idx[self.rank * local : (self.rank + 1) * local]]

    def iteration(self) -> dict:
        cfg, step, g = self.cfg, self.step, self.cfg.data.group_size
        prompts = self._prompts(step)
        texts = [p for p in prompts for _ in range(g)]
        emb = self.policy.encode(prompts).to(self.device).repeat_interleave(g, 0)
        plan = self.algorithm.plan(len(prompts), g, self.table, generator(cfg.seed, step, self.rank, "plan"))
        plan.check(self.table)
        self.policy.eval()
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
        )
        scores = rewards.score(self.reward_fn, self.policy.decode, ro.latents, texts, g)
        r_local = scores[cfg.reward.name].float().cpu()
        if not torch.isfinite(r_local).all():
            raise NonFiniteError(f"non-finite reward at step {step}")
        r_all = self.engine.all_gather_cat(r_local.view(len(prompts), g))
        adv_all = group_advantages(r_all, cfg.optim.global_std, cfg.optim.adv_clip)
        adv = adv_all[self.rank * len(prompts) : (self.rank + 1) * len(prompts)].flatten()
        comp = self.engine.all_reduce_sum(torch.tensor([ro.nfe], dtype=torch.float64))
        self.meter.forward(float(comp[0]))

        stats = self._update(ro.transitions, adv[ro.transitions.traj], emb, step)
        row = {"kind": "train", "reward/mean": float(r_all.mean()), "reward/std": float(r_all.std())}
        for name, values in scores.items():
            if name != cfg.reward.name:
                row[f"reward/{name}"] = float(self.engine.all_gather_cat(values.float().cpu()).mean())
        row["stats/zero_std_ratio"] = zero_std_ratio(r_all)
        row["stats/transitions"] = float(len(ro.transitions) * self.world)
        row.update(stats)
        return row

    def _update(self, tr, adv: torch.Tensor, emb: torch.Tensor, step: int) -> dict:
        cfg, table = self.cfg, self.table
        self.policy.train()
        n = len(tr)
        sums: dict[str, float] = defaultdict(float)
        gsum: dict[int, float] = defaultdict(float)
        gcount: dict[int, int] = defaultdict(int)
        grad_norms = []
        gen = generator(cfg.seed, step, self.rank, "minibatches")
        backward_samples = 0
        first_dev = None
        for _ in range(cfg.optim.inner_epochs):
            perm = torch.randperm(n, generator=gen)
            for mb in perm.chunk(cfg.optim.minibatches):
                total = self.engine.all_reduce_sum(torch.tensor([float(tr.weight[mb].sum()), float(len(mb))]))
                micro = mb.split(cfg.optim.micro_batch)
                for i, idx in enumerate(micro):
                    sub = tr.select(idx)
                    k = sub.step
                    x = sub.x.to(self.device)
                    sigma = table.sigma[k].float().to(self.device)
                    v = self.policy.velocity(
                        x.to(self.dtype), sigma, emb[sub.traj], self.null_emb, cfg.sampling.guidance
                    )
                    v = v.float()
                    v.retain_grad()
                    _, logp, mean = sde_step(
                        table.kind,
                        x,
                        v,
                        table.sigma[k],
                        table.sigma_next[k],
                        table.std_t[k],
                        x_next=sub.x_next.to(self.device),
                    )
                    w = normalize_weights(sub.weight, float(total[0]), int(total[1])).float().to(self.device)
                    per, st = ppo_clip(
                        logp, sub.logp_old.to(self.device), adv[idx].to(self.device), w, cfg.optim.clip_range
                    )
                    loss = per.sum()
                    if cfg.optim.beta > 0:
                        with torch.no_grad(), self.policy.reference():
                            v_ref = self.policy.velocity(
                                x.to(self.dtype), sigma, emb[sub.traj], self.null_emb, cfg.sampling.guidance
                            ).float()
                        mean_ref = transition_mean(
                            table.kind, x, v_ref, table.sigma[k], table.sigma_next[k], table.std_t[k]
                        )
                        kl = gaussian_kl(mean, mean_ref, table.step_std[k])
                        loss = loss + cfg.optim.beta * kl.sum()
                        sums["kl"] += float(kl.detach().sum())
                        self.meter.forward(len(idx) * self.world, self.cfg_mult)
                    loss = loss / len(mb)
                    if not torch.isfinite(loss):
                        raise NonFiniteError(f"non-finite loss at step {step}")
                    self.engine.backward(loss, last_micro_batch=i == len(micro) - 1)
                    backward_samples += len(idx)
                    norms = v.grad.flatten(1).norm(dim=1).cpu() * len(mb)  # per transition, undo the 1/|mb|
                    for kk, nn in zip(k.tolist(), norms.tolist()):
                        gsum[kk] += nn
                        gcount[kk] += 1
                    sums["policy"] += float(per.detach().sum())
                    sums["clipfrac"] += float(st["clipfrac"].sum())
                    sums["approx_kl"] += float(st["approx_kl"].sum())
                    sums["ratio"] += float(st["ratio"].sum())
                    sums["ratio_dev"] = max(sums["ratio_dev"], float((st["ratio"] - 1).abs().max()))
                    sums["count"] += len(idx)
                if first_dev is None:  # the first minibatch is on-policy: its ratios are 1
                    first_dev = sums["ratio_dev"]
                grad_norms.append(self.engine.step())
                self._update_ema()
        self.meter.forward(backward_samples * self.world, self.cfg_mult)
        self.meter.backward(backward_samples * self.world, self.cfg_mult)
        c = max(sums["count"], 1)
        out = {
            "loss/policy": sums["policy"] / c,
            "loss/kl": sums["kl"] / c,
            "stats/clipfrac": sums["clipfrac"] / c,
            "stats/approx_kl": sums["approx_kl"] / c,
            "stats/ratio_mean": sums["ratio"] / c,
            "stats/ratio_max_dev": sums["ratio_dev"],
            "stats/ratio_dev_first_minibatch": first_dev if first_dev is not None else 0.0,
            "stats/grad_norm": sum(grad_norms) / len(grad_norms),
        }
        for kk in sorted(gsum):
            out[f"grad_t/{kk:02d}"] = gsum[kk] / gcount[kk]
        return out

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.optim.ema_decay
        with torch.no_grad():
            for name, p in self._trainable().items():
                self.ema[name].mul_(d).add_(p.detach(), alpha=1 - d)

    # -- evaluation and checkpoints ------------------------------------------------------------
    def evaluate(self) -> dict:
        cfg = self.cfg
        n = cfg.data.eval_samples
        local = n // self.world
        prompts = [self.eval_prompts[i % len(self.eval_prompts)] for i in range(n)]
        mine = prompts[self.rank * local : (self.rank + 1) * local]
        self.policy.eval()
        backup = None
        if self.ema is not None:
            backup = self._trainable_copy()
            self._load_trainable(self.ema)
        videos, nfe = generate_ode(
            self.policy,
            mine,
            self.eval_table,
            cfg.sampling.guidance,
            cfg.data.eval_seed,
            index_offset=self.rank * local,
            dtype=self.dtype,
            device=self.device,
        )
        if backup is not None:
            self._load_trainable(backup)
        scores = self.reward_fn(videos, mine)
        scores.update(rewards.eval_metrics(videos, mine))
        self.meter.forward(nfe * self.world, eval=True)
        row = {"kind": "eval", "eval/reward": float(self.engine.all_gather_cat(scores[cfg.reward.name].float()).mean())}
        for name, values in scores.items():
            row[f"eval/{name}"] = float(self.engine.all_gather_cat(values.float()).mean())
        if self.rank == 0 and cfg.save_eval_videos:
            from grpo_zoo.media import save_grid

            save_grid(videos[:16], self.run.path / "eval" / f"step-{self.step:06d}.png", mine[:16])
        if cfg.save_eval_videos:  # kept (as uint8, on the host) until the run ends: see _write_eval_videos
            from grpo_zoo.media import to_uint8

            self.last_videos = (to_uint8(videos.cpu()), mine)
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

    def _load_trainable(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self._trainable().items():
                p.copy_(values[name])

    def save_checkpoint(self) -> None:
        staging = self.run.staging(self.step)
        if self.rank == 0:
            staging.mkdir(parents=True, exist_ok=True)
        self.engine.barrier()
        self.engine.save(staging)
        state = {
            "step": self.step,
            "meter": self.meter.state_dict(),
            "ema": self.ema,
            "torch_rng": torch.get_rng_state(),
            "last_eval": self.last_eval,  # a resumed run does not repeat a finished evaluation
            "metrics_rows": self.run.rows_written if self.rank == 0 else None,  # the rows a resume keeps
        }
        tmp = staging / f".trainer_rank{self.rank}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, staging / f"trainer_rank{self.rank}.pt")
        self.engine.barrier()
        if self.rank == 0:
            self.run.commit_checkpoint(self.step)
        self.engine.barrier()

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
