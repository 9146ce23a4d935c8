"""The `hpsv3` reward: a client of the HPSv3 service (grpo_zoo/rewards/hpsv3_service/).

HPSv3 scores images, so a video is scored frame by frame: every decoded frame (`frames: all`,
as Flash-GRPO's `video_hpsv3_remote` does) or `frames` frames sampled evenly over its length.
The frame scores are aggregated per video by `mean` or `top_fraction`: the mean of the best
floor(top_fraction x frames) of them (at least one), the reference's `int(l * 0.3)`, so the
paper's top 30% of 81 frames is the best 24. Videos go to the service in requests of
`batch_size` videos, several in flight at once (`submit` returns a future, so the trainer
decodes the next chunk while the service scores this one).

Every request carries an id; a request that fails (connection refused while the service
restarts, a timeout, a 5xx) is retried with the same id after an exponential backoff, up to
`retries` times; a response must carry that id and exactly one score per frame sent, or
the reward raises. So a restart mid-run costs time, never a dropped, duplicated or
misaligned reward; a service that stays down fails the run loudly (it resumes later).

On a cluster the service may run on another node behind a shared token: the client sends
`Authorization: Bearer TOKEN`, the token read from $HPSV3_TOKEN or from a file
(`token_file`, or $HPSV3_TOKEN_FILE); `url_file` (or $HPSV3_URL_FILE) names a file holding the
service's address, read again at every attempt, so a service restarted elsewhere is found.
A 401 or 413 is not retried: the token or the request size is wrong, and the error says which.

Options (reward.options): url, url_file, token_file, frames, aggregate, top_fraction,
batch_size, timeout, retries, backoff, max_in_flight.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from grpo_zoo.errors import ConfigError

AGGREGATES = ("mean", "top_fraction")


def sample_frames(num_frames: int, k: int | str) -> list[int]:
    """k frame indices spread evenly over the video, first and last included ("all": every frame)."""
    if k == "all" or k >= num_frames:
        return list(range(num_frames))
    return [round(i * (num_frames - 1) / (k - 1)) for i in range(k)] if k > 1 else [num_frames // 2]


def aggregate(scores: torch.Tensor, how: str, top_fraction: float) -> torch.Tensor:
    """[B, K] frame scores -> [B] video scores."""
    if how == "mean":
        return scores.mean(1)
    k = max(1, int(top_fraction * scores.shape[1]))  # floor, as the reference: int(l * 0.3)
    return scores.topk(k, dim=1).values.mean(1)


def png_b64(frame: torch.Tensor) -> str:
    """[3, H, W] in [-1, 1] -> base64 PNG."""
    from PIL import Image

    arr = ((frame.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ServiceError(RuntimeError):
    """The HPSv3 service did not answer correctly within the retries."""


class HPSv3Reward:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8765",
        frames: int | str = 8,
        aggregate: str = "top_fraction",
        top_fraction: float = 0.3,
        batch_size: int = 8,
        timeout: float = 300.0,
        retries: int = 6,
        backoff: float = 1.0,
        max_in_flight: int = 2,
        url_file: str | None = None,
        token_file: str | None = None,
    ):
        if aggregate not in AGGREGATES:
            raise ConfigError(f"reward.options.aggregate: one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        if frames != "all" and not (isinstance(frames, int) and not isinstance(frames, bool)):
            raise ConfigError(f"reward.options.frames: a number of frames or 'all', got {frames!r}")
        if (
            not 0 < top_fraction <= 1
            or (frames != "all" and frames < 1)
            or batch_size < 1
            or retries < 0
            or max_in_flight < 1
        ):
            raise ConfigError(
                "reward.options: need 0 < top_fraction <= 1, frames >= 1 (or 'all'), batch_size >= 1, retries >= 0, "
                "max_in_flight >= 1"
            )
        self.url = url.rstrip("/")
        self.frames, self.how, self.top_fraction = frames, aggregate, top_fraction
        self.batch_size, self.timeout, self.retries, self.backoff = batch_size, timeout, retries, backoff
        self.pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="hpsv3")
        self.stats = {"requests": 0, "retries": 0}
        self.url_file = url_file or os.environ.get("HPSV3_URL_FILE")
        self.token_file = token_file or os.environ.get("HPSV3_TOKEN_FILE")

    # -- the service -------------------------------------------------------------------
    def address(self) -> str:
        """The service's URL: the url_file's content when there is one, else `url`."""
        if self.url_file:
            try:
                return Path(self.url_file).read_text().strip().rstrip("/") or self.url
            except OSError:
                return self.url
        return self.url

    def headers(self) -> dict[str, str]:
        token = os.environ.get("HPSV3_TOKEN", "").strip()
        if not token and self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as err:
                raise ServiceError(
                    f"reward.options.token_file: cannot read {self.token_file}: {err.strerror}"
                ) from None
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}

    def check(self) -> None:
        """Fail early and clearly when the service is not there or refuses us (trainer.check calls this)."""
        url = self.address()
        try:
            req = urllib.request.Request(f"{url}/health", headers=self.headers())
            with urllib.request.urlopen(req, timeout=10) as r:
                info = json.loads(r.read())
        except urllib.error.HTTPError as err:
            if err.code == 401:
                raise ConfigError(
                    f"reward.options.token_file: the HPSv3 service at {url} wants a token and refused ours "
                    "(set $HPSV3_TOKEN or reward.options.token_file to the service's token file)"
                ) from None
            raise ConfigError(f"reward.options.url: the HPSv3 service at {url} answered {err.code}") from None
        except (OSError, ValueError, ServiceError) as err:
            if self.url_file and not Path(self.url_file).is_file():
                raise ConfigError(
                    f"reward.options.url_file: no {self.url_file} (is the service job running? see slurm/README.md)"
                ) from None
            raise ConfigError(
                f"reward.options.url: the HPSv3 service at {url} is unreachable ({err}); start it with "
                "bash grpo_zoo/rewards/hpsv3_service/serve.sh (see its README)"
            ) from None
        if info.get("status") != "ok":
            raise ConfigError(f"reward.options.url: the HPSv3 service at {url} is not ready: {info}")

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            url = self.address()
            req = urllib.request.Request(f"{url}/score", data=data, headers=self.headers(), method="POST")
            try:
                self.stats["requests"] += 1
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as err:
                if err.code == 401:
                    raise ServiceError(
                        f"HPSv3 service at {url} refused the token (401): set $HPSV3_TOKEN or reward.options.token_file"
                    ) from None
                if err.code == 413:
                    raise ServiceError(
                        f"HPSv3 service at {url} refused a request as too large (413: {err.read()[:200]!r}); "
                        "lower reward.options.batch_size or frames, or raise the service's --max-body-mb/--max-frames"
                    ) from None
                if 400 <= err.code < 500:  # our request is wrong: retrying cannot help
                    raise ServiceError(f"HPSv3 service rejected the request: {err.code} {err.read()[:300]!r}") from None
                last = f"HTTP {err.code}"  # 5xx, 503 busy: the same request (same id) again
            except (OSError, ValueError) as err:  # refused while restarting, reset, timeout, torn body
                last = f"{type(err).__name__}: {err}"
        raise ServiceError(f"HPSv3 service at {self.address()} failed {self.retries + 1} times; last: {last}")

    def _score_chunk(self, frames_b64: list[list[str]], prompts: list[str]) -> torch.Tensor:
        rid = uuid.uuid4().hex
        body = {"request_id": rid, "items": [{"prompt": p, "frames": f} for p, f in zip(prompts, frames_b64)]}
        out = self._post(body)
        scores = out.get("scores")
        if out.get("request_id") != rid or not isinstance(scores, list) or len(scores) != len(prompts):
            raise ServiceError(f"HPSv3 service answered another request (id {out.get('request_id')!r}, {rid!r} sent)")
        for s, f in zip(scores, frames_b64):
            if len(s) != len(f):
                raise ServiceError(f"HPSv3 service returned {len(s)} frame scores for {len(f)} frames")
        return torch.tensor(scores, dtype=torch.float32)

    # -- the reward interface ------------------------------------------------------------
    def submit(self, videos: torch.Tensor, prompts: list[str]) -> Future:
        """Start scoring these videos; the future's result is what __call__ returns."""
        idx = sample_frames(videos.shape[2], self.frames)
        frames = [[png_b64(v[:, i]) for i in idx] for v in videos]
        chunks = [
            self.pool.submit(self._score_chunk, frames[s : s + self.batch_size], prompts[s : s + self.batch_size])
            for s in range(0, len(prompts), self.batch_size)
        ]
        done: Future = Future()
        lock = threading.Lock()

        def collect(_=None):
            with lock:
                if not all(c.done() for c in chunks) or done.done():
                    return
                try:
                    per_frame = torch.cat([c.result() for c in chunks])
                    done.set_result(
                        {
                            "hpsv3": aggregate(per_frame, self.how, self.top_fraction),
                            "hpsv3_frame_mean": per_frame.mean(1),
                        }
                    )
                except Exception as err:
                    done.set_exception(err)

        for c in chunks:
            c.add_done_callback(collect)
        return done

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.submit(videos, prompts).result()
