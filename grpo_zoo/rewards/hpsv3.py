"""The `hpsv3` reward: a client of the HPSv3 service (grpo_zoo/rewards/hpsv3_service/).

HPSv3 scores images, so a video is scored frame by frame: every decoded frame (`frames: all`,
as Flash-GRPO's `video_hpsv3_remote` does) or `frames` frames sampled evenly over its length.
The frame scores are aggregated per video by `mean` or `top_fraction`: the mean of the best
floor(top_fraction x frames) of them (at least one), the reference's `int(l * 0.3)`, so the
paper's top 30% of 81 frames is the best 24.

Frames travel as JPEG at PIL's default quality 75, as both references send them (Flash-GRPO
flow_grpo/rewards.py:127, flow_grpo flow_grpo/rewards.py:141: `img.save(buffer, format="JPEG")`):
on an 81-frame 480x832 photo-like video 6.4 MiB of base64 against PNG's 54 MiB (5x less on
noise) and 1-2 ms a frame to encode against PNG's 50-240 ms (BENCHMARKS.md, "HPSv3 transport"). `submit` returns a future at once: the frames are rounded to uint8 on the
videos' device, then encoded on `encode_threads` threads (PIL releases the GIL), packed into
requests under the service's limits and sent from `max_in_flight` threads, chunk by chunk of
`batch_size` videos, so the trainer decodes the next group while the service scores this one.
A request holds at most `request_mb` MiB of JSON and `request_frames` frames (a video may span
requests: frames are scored one by one, the aggregation is ours); left unset, they are the
service's own limits (its /health, read by `check()` before any compute), and set above them
they are refused there in one line.

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
batch_size, timeout, retries, backoff, max_in_flight, jpeg_quality, request_mb, request_frames,
encode_threads.
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
JPEG_QUALITY = 75  # the references' frames: PIL's JPEG default (Flash-GRPO flow_grpo/rewards.py:127)
DEFAULT_REQUEST_MB = 64  # the request limits until check() reads the service's (its /health)
DEFAULT_REQUEST_FRAMES = 4096
BODY_OVERHEAD, ITEM_OVERHEAD, FRAME_OVERHEAD = 128, 32, 4  # JSON around the frames: id, keys, quotes, commas


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


def rounded(videos: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] (or uint8 in 0..255) -> frames `idx` as uint8 [B, K, H, W, 3] on the host.

    Rounded on the tensor's own device (a GPU after decoding), so only uint8 crosses to the host;
    from a CPU tensor it is a view, made contiguous later on the client's threads."""
    v = videos if idx == list(range(videos.shape[2])) else videos[:, :, idx]  # `frames: all` copies nothing
    if v.dtype != torch.uint8:
        v = ((v.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    v = v.permute(0, 2, 3, 4, 1)
    return v if v.device.type == "cpu" else v.contiguous().cpu()


def pixels(videos: torch.Tensor, idx: list[int]) -> np.ndarray:
    """The frames `idx` as the service receives them before JPEG: uint8 [B, K, H, W, 3]."""
    return rounded(videos, idx).contiguous().numpy()


def encode_frame(frame: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """[H, W, 3] uint8 -> base64 JPEG (PIL releases the GIL while it encodes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode()


def pack(
    sizes: list[list[int]], prompts: list[str], max_bytes: int, max_frames: int
) -> list[list[tuple[int, int, int]]]:
    """Split videos' frames into requests of at most `max_bytes` (the JSON body) and `max_frames`.

    `sizes[v][f]` is the length of frame f's base64 text. A request is a list of (video, first
    frame, end frame): a video may span requests (the service scores frames one by one, the
    aggregation is ours)."""
    requests, current, used, count = [], [], BODY_OVERHEAD, 0
    for v, frames in enumerate(sizes):
        item = len(json.dumps(prompts[v])) + ITEM_OVERHEAD
        first = 0
        for f, size in enumerate(frames):
            if size + FRAME_OVERHEAD + item + BODY_OVERHEAD > max_bytes:
                raise ServiceError(
                    f"a frame encodes to {size} bytes, over the request limit of {max_bytes} bytes "
                    "(reward.options.request_mb, or the service's --max-body-mb)"
                )
            extra = size + FRAME_OVERHEAD + (item if f == first else 0)
            if count and (used + extra > max_bytes or count + 1 > max_frames):
                if f > first:
                    current.append((v, first, f))
                requests.append(current)
                current, used, count, first = [], BODY_OVERHEAD, 0, f
                extra = size + FRAME_OVERHEAD + item
            used, count = used + extra, count + 1
        current.append((v, first, len(frames)))
    if current:
        requests.append(current)
    return requests


class ServiceError(RuntimeError):
    """The HPSv3 service did not answer correctly within the retries."""


class HPSv3Reward:
    NAME = "hpsv3"
    """The reward's name, its first entry and the scorer its service must serve (its /health)."""
    LABEL = "HPSv3"
    ENV = "HPSV3"
    """Prefix of the environment variables that find the service: $<ENV>_TOKEN, _TOKEN_FILE, _URL_FILE."""
    URL = "http://127.0.0.1:8765"
    SERVE = "bash grpo_zoo/rewards/hpsv3_service/serve.sh"
    AGGREGATE = "top_fraction"

    def __init__(
        self,
        url: str | None = None,
        frames: int | str = 8,
        aggregate: str | None = None,
        top_fraction: float = 0.3,
        batch_size: int = 8,
        timeout: float = 300.0,
        retries: int = 6,
        backoff: float = 1.0,
        max_in_flight: int = 2,
        url_file: str | None = None,
        token_file: str | None = None,
        jpeg_quality: int = JPEG_QUALITY,
        request_mb: float | None = None,
        request_frames: int | None = None,
        encode_threads: int = 4,
    ):
        url, aggregate = url or self.URL, aggregate or self.AGGREGATE
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
        for name, value, low, high in (
            ("jpeg_quality", jpeg_quality, 1, 95),
            ("encode_threads", encode_threads, 1, 256),
            ("request_frames", request_frames, 1, 2**20),
        ):
            if value is not None and not (
                isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
            ):
                raise ConfigError(f"reward.options.{name}: an integer in [{low}, {high}], got {value!r}")
        if request_mb is not None and not (
            isinstance(request_mb, (int, float)) and not isinstance(request_mb, bool) and 0.1 <= request_mb <= 4096
        ):
            raise ConfigError(f"reward.options.request_mb: a size in MiB in [0.1, 4096], got {request_mb!r}")
        self.url = url.rstrip("/")
        self.frames, self.how, self.top_fraction = frames, aggregate, top_fraction
        self.batch_size, self.timeout, self.retries, self.backoff = batch_size, timeout, retries, backoff
        self.quality, self.request_mb, self.request_frames = jpeg_quality, request_mb, request_frames
        # the request limits in force: the options', else the service's (learned by check()), else the defaults
        self.max_bytes = int((request_mb or DEFAULT_REQUEST_MB) * 2**20)
        self.max_frames = request_frames or DEFAULT_REQUEST_FRAMES
        self.pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix=self.NAME)  # chunks: encode, send, wait
        self.encoder = ThreadPoolExecutor(encode_threads, thread_name_prefix=f"{self.NAME}-jpeg")  # frames of a chunk
        self.stats = {"requests": 0, "retries": 0}
        self.url_file = url_file or os.environ.get(f"{self.ENV}_URL_FILE")
        self.token_file = token_file or os.environ.get(f"{self.ENV}_TOKEN_FILE")

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
        token = os.environ.get(f"{self.ENV}_TOKEN", "").strip()
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
                    f"reward.options.token_file: the {self.LABEL} service at {url} wants a token and refused ours "
                    f"(set ${self.ENV}_TOKEN or reward.options.token_file to the service's token file)"
                ) from None
            raise ConfigError(f"reward.options.url: the {self.LABEL} service at {url} answered {err.code}") from None
        except (OSError, ValueError, ServiceError) as err:
            if self.url_file and not Path(self.url_file).is_file():
                raise ConfigError(
                    f"reward.options.url_file: no {self.url_file} (is the service job running? see slurm/README.md)"
                ) from None
            raise ConfigError(
                f"reward.options.url: the {self.LABEL} service at {url} is unreachable ({err}); start it with "
                f"{self.SERVE} (see grpo_zoo/rewards/hpsv3_service/README.md)"
            ) from None
        if info.get("status") != "ok":
            raise ConfigError(f"reward.options.url: the {self.LABEL} service at {url} is not ready: {info}")
        serves = info.get("scorer", "hpsv3")  # a service before 2026-12-07 served HPSv3 alone
        if serves != self.NAME:
            raise ConfigError(
                f"reward.options.url: the service at {url} scores {serves}, not {self.NAME}; point {self.NAME} at its own service"
            )
        self.fit_limits(info, url)

    def fit_limits(self, info: dict, url: str) -> None:
        """Take the service's request limits (its /health) where the options leave them open;
        an option over the service's limit is refused (ConfigError: every request would get 413)."""
        body, frames = info.get("max_body_bytes"), info.get("max_frames")
        if isinstance(body, int):
            if self.request_mb is not None and self.max_bytes > body:
                raise ConfigError(
                    f"reward.options.request_mb: {self.request_mb} MiB requests are over the limit of the {self.LABEL} "
                    f"service at {url} ({body / 2**20:g} MiB, its --max-body-mb); lower it or leave it unset"
                )
            self.max_bytes = min(self.max_bytes, body) if self.request_mb is not None else body
        if isinstance(frames, int):
            if self.request_frames is not None and self.max_frames > frames:
                raise ConfigError(
                    f"reward.options.request_frames: {self.request_frames} frames per request are over the limit "
                    f"of the {self.LABEL} service at {url} ({frames}, its --max-frames); lower it or leave it unset"
                )
            self.max_frames = self.max_frames if self.request_frames is not None else frames

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        if len(data) > self.max_bytes:  # pack() keeps every request under the limit; never send one over it
            raise ServiceError(f"a request of {len(data)} bytes was built over the limit of {self.max_bytes}")
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
                        f"{self.LABEL} service at {url} refused the token (401): set ${self.ENV}_TOKEN or reward.options.token_file"
                    ) from None
                if err.code == 413:
                    raise ServiceError(
                        f"{self.LABEL} service at {url} refused a request as too large (413: {err.read()[:200]!r}); "
                        "lower reward.options.request_mb or request_frames (or leave them unset: the trainer's check "
                        "reads the service's limits), or raise the service's --max-body-mb/--max-frames"
                    ) from None
                if 400 <= err.code < 500:  # our request is wrong: retrying cannot help
                    raise ServiceError(
                        f"{self.LABEL} service rejected the request: {err.code} {err.read()[:300]!r}"
                    ) from None
                last = f"HTTP {err.code}"  # 5xx, 503 busy: the same request (same id) again
            except (OSError, ValueError) as err:  # refused while restarting, reset, timeout, torn body
                last = f"{type(err).__name__}: {err}"
        raise ServiceError(f"{self.LABEL} service at {self.address()} failed {self.retries + 1} times; last: {last}")

    def _send(self, items: list[dict]) -> list[list[float]]:
        rid = uuid.uuid4().hex
        out = self._post({"request_id": rid, "items": items})
        scores = out.get("scores")
        if out.get("request_id") != rid or not isinstance(scores, list) or len(scores) != len(items):
            raise ServiceError(
                f"{self.LABEL} service answered another request (id {out.get('request_id')!r}, {rid!r} sent)"
            )
        for s, item in zip(scores, items):
            if not isinstance(s, list) or len(s) != len(item["frames"]):
                raise ServiceError(
                    f"{self.LABEL} service returned {len(s)} frame scores for {len(item['frames'])} frames"
                )
        return scores

    def _score_chunk(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """uint8 [B, K, H, W, 3] -> [B, K] frame scores: JPEG-encoded on the encoder threads, sent in
        requests under the limits, the answers put back in video and frame order."""
        frames = frames.contiguous().numpy()
        encoded = list(self.encoder.map(lambda f: encode_frame(f, self.quality), frames.reshape(-1, *frames.shape[2:])))
        k = frames.shape[1]
        per_video = [encoded[i * k : (i + 1) * k] for i in range(len(prompts))]
        sizes = [[len(f) for f in v] for v in per_video]
        scores = torch.full((len(prompts), k), float("nan"))
        for request in pack(sizes, prompts, self.max_bytes, self.max_frames):
            items = [{"prompt": prompts[v], "frames": per_video[v][a:b]} for v, a, b in request]
            for (v, a, b), s in zip(request, self._send(items)):
                scores[v, a:b] = torch.tensor(s, dtype=torch.float32)
        return scores

    # -- the reward interface ------------------------------------------------------------
    def submit_frames(self, videos: torch.Tensor, prompts: list[str]) -> Future:
        """Start scoring; the future's result is the [B, K] frame scores of the sampled frames.

        Only the rounding to uint8 happens here (on the videos' device); encoding, sending and
        waiting run on the client's threads, chunk by chunk, so the caller goes on at once."""
        idx = sample_frames(videos.shape[2], self.frames)
        chunks = [
            self.pool.submit(
                self._score_chunk, rounded(videos[s : s + self.batch_size], idx), prompts[s : s + self.batch_size]
            )
            for s in range(0, len(prompts), self.batch_size)
        ]
        done: Future = Future()
        lock = threading.Lock()

        def collect(_=None):
            with lock:
                if not all(c.done() for c in chunks) or done.done():
                    return
                try:
                    done.set_result(torch.cat([c.result() for c in chunks]))
                except Exception as err:
                    done.set_exception(err)

        for c in chunks:
            c.add_done_callback(collect)
        return done

    def submit(self, videos: torch.Tensor, prompts: list[str]) -> Future:
        """Start scoring these videos; the future's result is what __call__ returns."""
        done: Future = Future()

        def aggregated(frames: Future) -> None:
            try:
                per_frame = frames.result()
                done.set_result(
                    {
                        self.NAME: aggregate(per_frame, self.how, self.top_fraction),
                        f"{self.NAME}_frame_mean": per_frame.mean(1),
                    }
                )
            except Exception as err:
                done.set_exception(err)

        self.submit_frames(videos, prompts).add_done_callback(aggregated)
        return done

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.submit(videos, prompts).result()


class PickScoreReward(HPSv3Reward):
    """PickScore per frame (PickScore_v1 behind `server.py --scorer pickscore`), the mean over frames
    by default; the same protocol, options and environment variables with the PICKSCORE prefix."""

    NAME, LABEL, ENV, URL, AGGREGATE = "pickscore", "PickScore", "PICKSCORE", "http://127.0.0.1:8766", "mean"
    SERVE = "bash grpo_zoo/rewards/hpsv3_service/serve_clip.sh pickscore MODEL_DIR --port 8766"


class CLIPScoreReward(HPSv3Reward):
    """CLIP score per frame (`server.py --scorer clip_score`), the mean over frames by default."""

    NAME, LABEL, ENV, URL, AGGREGATE = "clip_score", "CLIP score", "CLIP_SCORE", "http://127.0.0.1:8767", "mean"
    SERVE = "bash grpo_zoo/rewards/hpsv3_service/serve_clip.sh clip_score MODEL_DIR --port 8767"
