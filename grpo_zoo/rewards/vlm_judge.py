"""The `vlm_judge` reward: a vision-language model asked to rate each video, over the OpenAI
chat-completions API that a user points at their own server (vLLM, SGLang, TGI all serve it).

Per video, `frames` frames sampled evenly (first and last included) go as JPEG data URLs (quality
75, as the other services' frames) in one user message, followed by `question` with the video's
prompt. The judge answers one token (`max_tokens: 1`, temperature 0) with its `top_logprobs`; the
score is the probability-weighted mean of the digits 1-9 among them, (E[d] - 1) / 8 in [0, 1],
as Q-Align and UnifiedReward read a VLM's rating from its token probabilities rather than its
sampled text (a judge that returns no log-probs is scored by the digit it wrote). A video-level
reward: the judge sees the frames together.

Protocol as the other services: `check()` reads `{url}/models` before any compute (the model
must be listed; 401 names the key), requests carry `Authorization: Bearer KEY` from
$VLM_JUDGE_API_KEY or `key_file`, a failed request (refused, reset, timeout, 5xx) is retried
with exponential backoff up to `retries` times, then the run stops loudly and resumes later.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from grpo_zoo.errors import ConfigError
from grpo_zoo.rewards.hpsv3 import JPEG_QUALITY, ServiceError, encode_frame, pixels, sample_frames

QUESTION = (
    "These are frames of one video generated for the prompt: {prompt}. How well does the video show "
    "the prompt, and how good is it? Answer with one digit from 1 (worst) to 9 (best)."
)
DIGITS = tuple(str(d) for d in range(1, 10))


def rating(choice: dict) -> float:
    """(E[digit] - 1) / 8 from a chat completion choice's first-token top_logprobs, else its text."""
    tops = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs") or []
    mass = {}
    for t in tops:
        token = str(t.get("token", "")).strip()
        if token in DIGITS and isinstance(t.get("logprob"), int | float):
            mass[token] = mass.get(token, 0.0) + math.exp(t["logprob"])
    if mass:
        total = sum(mass.values())
        return (sum(int(d) * p for d, p in mass.items()) / total - 1) / 8
    found = re.search(r"[1-9]", str((choice.get("message") or {}).get("content") or ""))
    if not found:
        raise ServiceError(f"the judge answered no rating: {json.dumps(choice)[:200]}")
    return (int(found.group()) - 1) / 8


class VLMJudgeReward:
    NAME = "vlm_judge"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000/v1",
        model: str = "judge",
        frames: int = 4,
        question: str = QUESTION,
        key_file: str | None = None,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_in_flight: int = 8,
        jpeg_quality: int = JPEG_QUALITY,
        top_logprobs: int = 20,
        min_side: int = 56,
    ):
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 64:
            raise ConfigError(f"reward.options.frames: the judge sees 1 to 64 frames a video, got {frames!r}")
        if "{prompt}" not in question:
            raise ConfigError("reward.options.question: must hold {prompt}, where the video's prompt goes")
        if retries < 0 or max_in_flight < 1 or not 1 <= top_logprobs <= 20 or timeout <= 0 or not 1 <= min_side <= 4096:
            raise ConfigError(
                "reward.options: need retries >= 0, max_in_flight >= 1, 1 <= top_logprobs <= 20, timeout > 0, "
                "1 <= min_side <= 4096"
            )
        self.url, self.model, self.frames, self.question = url.rstrip("/"), model, frames, question
        self.key_file = key_file or os.environ.get("VLM_JUDGE_KEY_FILE")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.quality, self.top_logprobs, self.min_side = jpeg_quality, top_logprobs, min_side
        self.pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="vlm-judge")
        self.stats = {"requests": 0, "retries": 0}
        self.lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        key = os.environ.get("VLM_JUDGE_API_KEY", "").strip()
        if not key and self.key_file:
            try:
                key = Path(self.key_file).read_text().strip()
            except OSError as err:
                raise ConfigError(f"reward.options.key_file: cannot read {self.key_file}: {err.strerror}") from None
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def check(self) -> None:
        """The server answers and serves `model` (its /models), before any compute."""
        try:
            req = urllib.request.Request(f"{self.url}/models", headers=self.headers())
            with urllib.request.urlopen(req, timeout=10) as r:
                listed = [m.get("id") for m in json.loads(r.read()).get("data", [])]
        except urllib.error.HTTPError as err:
            what = "refused our key (set $VLM_JUDGE_API_KEY or reward.options.key_file)" if err.code == 401 else ""
            raise ConfigError(
                f"reward.options.url: the judge at {self.url} answered {err.code} {what}".rstrip()
            ) from None
        except (OSError, ValueError, AttributeError) as err:
            raise ConfigError(
                f"reward.options.url: the judge at {self.url} is unreachable or not OpenAI-compatible ({err}); "
                "point it at your server's /v1"
            ) from None
        if self.model not in listed:
            raise ConfigError(
                f"reward.options.model: the judge at {self.url} serves {', '.join(map(str, listed)) or 'no model'}, "
                f"not {self.model!r}"
            )

    def body(self, frames: list[str], prompt: str) -> dict:
        images = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{f}"}} for f in frames]
        text = {"type": "text", "text": self.question.format(prompt=prompt)}
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": [*images, text]}],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }

    def _ask(self, frames: list[str], prompt: str) -> float:
        data = json.dumps(self.body(frames, prompt)).encode()
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                with self.lock:
                    self.stats["retries"] += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(f"{self.url}/chat/completions", data=data, headers=self.headers())
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    out = json.loads(r.read())
                with self.lock:
                    self.stats["requests"] += 1
                return rating(out["choices"][0])
            except urllib.error.HTTPError as err:
                if 400 <= err.code < 500:
                    raise ServiceError(
                        f"the judge at {self.url} refused the request: {err.code} {err.read()[:300]!r}"
                    ) from None
                last = f"HTTP {err.code}"
            except (OSError, ValueError, KeyError, IndexError) as err:
                last = f"{type(err).__name__}: {err}"
        raise ServiceError(f"the judge at {self.url} failed {self.retries + 1} times; last: {last}")

    def upscaled(self, videos: torch.Tensor) -> torch.Tensor:
        """Videos whose shorter side is below `min_side` (a VLM's image processor refuses images
        under its patch size: Qwen2-VL's 28 pixels) resized up to it, bilinearly; others as they are."""
        b, c, f, h, w = videos.shape
        if min(h, w) >= self.min_side:
            return videos
        size = (round(h * self.min_side / min(h, w)), round(w * self.min_side / min(h, w)))
        flat = videos.transpose(1, 2).reshape(b * f, c, h, w).float()
        up = torch.nn.functional.interpolate(flat, size=size, mode="bilinear", align_corners=False)
        return up.reshape(b, f, c, *size).transpose(1, 2)

    def submit(self, videos: torch.Tensor, prompts: list[str]) -> Future:
        idx = sample_frames(videos.shape[2], self.frames)
        frames = [[encode_frame(f, self.quality) for f in video] for video in pixels(self.upscaled(videos), idx)]
        asks = [self.pool.submit(self._ask, f, p) for f, p in zip(frames, prompts, strict=True)]
        done: Future = Future()
        lock = threading.Lock()

        def finish(_=None) -> None:
            with lock:
                if done.done() or not all(a.done() for a in asks):
                    return
                try:
                    done.set_result({self.NAME: torch.tensor([a.result() for a in asks], dtype=torch.float32)})
                except BaseException as err:  # noqa: BLE001 (result() raises it to the caller)
                    done.set_exception(err)

        for a in asks:
            a.add_done_callback(finish)
        return done

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.submit(videos, prompts).result()
