"""Several rewards at once: `reward: {name: {entry: weight, ...}}`.

Each key is an entry some registered reward gives: a reward's own name (`hpsv3`, `pickscore`,
`toy_motion`) or one of the entries it declares (`hpsv3_frame_mean`). The rewards those entries
need are built once each (`reward.options` then maps a reward's name to its options) and called
once each per batch: a reward whose entries an earlier one already gave is not called again (the
toy rewards all give every toy entry). Every entry is logged; the training entry `weighted` is
sum_k w_k r_k, Flow-GRPO's multi_score (flow_grpo/rewards.py:360-399 at yifan123/flow_grpo@ac4c86e:
`score_details['avg']`, the weights not normalised).

How the weights reach the loss is `reward.aggregate` (grpo_zoo/core/advantages.py `aggregate`):
`sum` trains on `weighted`; `advantages` and `losses` train on each entry's own advantage.
"""

from __future__ import annotations

import difflib
import math
import threading
from concurrent.futures import Future

import torch

from grpo_zoo.errors import ConfigError

WEIGHTED = "weighted"
"""The training entry of a weighted reward: sum_k w_k r_k."""


def check_weights(weights: dict, where: str = "reward.name") -> dict[str, float]:
    """The weights as floats: finite, >= 0, one of them > 0 (ConfigError naming the first bad one)."""
    if not weights:
        raise ConfigError(f"{where}: expected {{entry: weight}} with one weight > 0, got an empty mapping")
    out = {}
    for entry, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int | float):
            raise ConfigError(f"{where}.{entry}: a weight is a number, got {w!r}")
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"{where}.{entry}: a weight is a finite number >= 0, got {w!r}")
        if entry == WEIGHTED:
            raise ConfigError(f"{where}: {WEIGHTED!r} is the weighted sum itself; name the entries it sums")
        out[str(entry)] = float(w)
    if not any(out.values()):
        raise ConfigError(f"{where}: every weight is 0; give one entry a weight > 0")
    return out


def resolve(weights: dict[str, float]) -> dict[str, list[str]]:
    """{reward name: [its entries among the weights]}, in the weights' order: an entry that is a
    registered reward's name is that reward's; another is the one reward that declares it."""
    from grpo_zoo import rewards

    out: dict[str, list[str]] = {}
    for entry in weights:
        if entry in rewards.names():
            owner = entry
        else:
            owners = [n for n in rewards.names() if entry in (rewards.entries(n) or ())]
            if not owners:
                known = sorted({e for n in rewards.names() for e in (rewards.entries(n) or (n,))})
                hint = difflib.get_close_matches(entry, known, n=1)
                fix = f"did you mean {hint[0]!r}?" if hint else f"choose among {', '.join(known)}"
                raise ConfigError(f"reward.name.{entry}: no reward gives an entry {entry!r} ({fix})")
            owner = owners[0]
        out.setdefault(owner, []).append(entry)
    return out


class WeightedReward:
    """Rewards called once each, their entries merged, and `weighted` = sum_k w_k r_k.

    A remote component (a reward service) is submitted first, so it scores while the local ones
    run; `submit` (when any component is remote) returns a future of the merged entries."""

    def __init__(self, weights: dict[str, float], parts: dict[str, object]):
        self.weights, self.parts = weights, parts
        if any(hasattr(fn, "submit") for fn in parts.values()):
            self.submit = self._submit

    def check(self) -> None:
        """Each component service reachable (the preflight's last check)."""
        for fn in self.parts.values():
            if hasattr(fn, "check"):
                fn.check()

    def close(self) -> None:
        for fn in self.parts.values():
            if hasattr(fn, "close"):
                fn.close()

    def merge(self, outs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        merged: dict[str, torch.Tensor] = {}
        for out in outs:
            for k, v in out.items():
                merged.setdefault(k, v)
        missing = [e for e in self.weights if e not in merged]
        if missing:
            raise KeyError(f"the rewards gave no entry {missing[0]!r} (they gave {', '.join(merged)})")
        total = sum(w * merged[e].double() for e, w in self.weights.items())
        return {WEIGHTED: total.float(), **merged}

    def _calls(self, videos: torch.Tensor, prompts: list[str], remote: bool):
        """Each component's answer (a dict, or a future where `remote`), skipping a local reward
        whose entries an earlier local one already gave."""
        pending = {n: fn.submit(videos, prompts) for n, fn in self.parts.items() if remote and hasattr(fn, "submit")}
        outs: list = []
        for name, fn in self.parts.items():
            if name in pending:
                outs.append(pending[name])
                continue
            have = {k for o in outs if isinstance(o, dict) for k in o}
            from grpo_zoo import rewards

            if name in have and set(rewards.entries(name) or (name,)) <= have:
                continue
            outs.append(fn(videos, prompts))
        return outs

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.merge(self._calls(videos, prompts, remote=False))

    def _submit(self, videos: torch.Tensor, prompts: list[str]) -> Future:
        outs = self._calls(videos, prompts, remote=True)
        done: Future = Future()
        lock = threading.Lock()

        def finish(_=None) -> None:
            with lock:
                if done.done() or not all(o.done() for o in outs if isinstance(o, Future)):
                    return
                try:
                    done.set_result(self.merge([o.result() if isinstance(o, Future) else o for o in outs]))
                except BaseException as err:  # noqa: BLE001 (the caller's result() raises it)
                    done.set_exception(err)

        for o in outs:
            if isinstance(o, Future):
                o.add_done_callback(finish)
        finish()
        return done
