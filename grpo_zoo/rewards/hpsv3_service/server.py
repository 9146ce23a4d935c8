"""The HPSv3 reward service: HTTP in front of hpsv3's HPSv3RewardInferencer.

Runs in its own environment (hpsv3 pins transformers 4.45.2 and installs top-level
`evaluate`/`generate` packages), created by setup.sh beside this file; it imports nothing
from grpo_zoo. Start it with serve.sh, or directly:

    .venv-hpsv3/bin/python grpo_zoo/rewards/hpsv3_service/server.py \\
        --checkpoint /models/HPSv3/HPSv3.safetensors --base-model /models/Qwen2-VL-7B-Instruct \\
        --port 8765 --device cuda --batch-size 16

Endpoints:
- GET /health: {"status": "ok", "device", "batch_size", "scored", "max_body_bytes", "max_frames",
  "decode_seconds", "forward_seconds"} (the limits are what the client packs its requests under).
- POST /score: {"request_id": str, "items": [{"prompt": str, "frames": [base64 image, ...]}]}
  -> {"request_id", "scores": [[score per frame], ...]} (HPSv3's mu per frame). Frames of
  concurrent requests are batched together, up to --batch-size images per forward. Frames
  (JPEG from the client; any format PIL reads) are decoded on --decode-threads threads, off the
  event loop, so one request's decoding never stalls the others' answers.
  Malformed requests get 400/422 with the reason; a failing batch gets 500; the server
  stays up either way. A repeated request_id (a client retrying a request whose answer it
  lost) is answered from a cache of recent results, not scored twice.

Guarded for a cluster: it listens on loopback unless --host says otherwise, and bound beyond
loopback it refuses to start without a shared token, read from $HPSV3_TOKEN or from a file
(--token-file or $HPSV3_TOKEN_FILE; never from the command line). With a token every request
needs `Authorization: Bearer TOKEN` (401 otherwise; compared in constant time). A body over
--max-body-mb or a request of more than --max-frames frames gets 413; more than --max-pending
frames waiting for the model gets 503 with Retry-After (the client retries the same request).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import ipaddress
import json
import os
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn
import yaml
from fastapi import FastAPI, HTTPException
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

_TORCHVISION_DEFS = None


def import_torchvision() -> None:
    """Import torchvision, also where its compiled ops cannot load.

    PyPI's torchvision wheels are CUDA builds: beside the CPU torch (a CPU-only test machine)
    their compiled ops do not load, and torchvision then fails at import while registering
    fake kernels for two of those ops. Declaring the two schemas lets its Python parts
    import; hpsv3 uses none of the compiled ops (calling one would still fail loudly).
    """
    global _TORCHVISION_DEFS
    import sys

    import torch

    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _TORCHVISION_DEFS = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _TORCHVISION_DEFS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401, F811


class Item(BaseModel):
    prompt: str = Field(max_length=4000)
    frames: list[str] = Field(min_length=1)  # how many: --max-frames (413)


class ScoreRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    items: list[Item] = Field(min_length=1)


def inferencer_config(base_model: str, dtype: str) -> str:
    """hpsv3's inference YAML with the local base model and no training-only settings."""
    import hpsv3

    packaged = Path(hpsv3.__file__).parent / "config" / "HPSv3_7B.yaml"
    cfg = yaml.safe_load(packaged.read_text())
    cfg.update(
        model_name_or_path=str(base_model),
        bf16=dtype == "bf16",
        torch_dtype="bfloat16" if dtype == "bf16" else "float32",
        deepspeed=None,
        report_to="none",
        disable_flash_attn2=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    path = Path(tempfile.mkdtemp(prefix="hpsv3-")) / "HPSv3_inference.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


class Scorer:
    """Batches frames from concurrent requests into model forwards of at most `batch_size`."""

    def __init__(self, model, batch_size: int, wait_s: float = 0.01):
        self.model, self.batch_size, self.wait_s = model, batch_size, wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.lock = threading.Lock()
        self.scored, self.forward_seconds = 0, 0.0
        self.pending = 0  # frames queued or being scored

    def forward(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        with self.lock, torch.no_grad():
            start = time.perf_counter()
            out = self.model.reward(images, prompts)
            self.forward_seconds += time.perf_counter() - start
        self.scored += len(images)
        return [float(v) for v in out[:, 0].float().cpu()]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.batch_size:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            images, prompts = [b[0] for b in batch], [b[1] for b in batch]
            try:
                scores = await loop.run_in_executor(None, self.forward, images, prompts)
            except Exception as err:  # noqa: BLE001 - the batch fails, the service stays
                for b in batch:
                    if not b[2].done():
                        b[2].set_exception(err)
                continue
            for b, s in zip(batch, scores):
                if not b[2].done():
                    b[2].set_result(s)

    async def score(self, image: Image.Image, prompt: str) -> float:
        fut = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            await self.queue.put((image, prompt, fut))
            return await fut
        finally:
            self.pending -= 1


def decode_frame(text: str) -> Image.Image:
    try:
        raw = base64.b64decode(text, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as err:
        raise HTTPException(400, f"a frame is not a base64-encoded image: {type(err).__name__}") from None
    return img.convert("RGB")


def digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class Guard:
    """ASGI middleware in front of every route: the shared token (401), then the body size (413).

    The body is read here, up to `max_body` bytes, before the app parses any of it; tokens
    are compared as SHA-256 digests with hmac.compare_digest (constant time, any length).
    """

    def __init__(self, app, token: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.token = digest(token) if token else None

    @staticmethod
    async def answer(send, status: int, detail: str, headers: list | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None:
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(digest(given), self.token) or not given:
                return await self.answer(send, 401, "missing or wrong token", [(b"www-authenticate", b"Bearer")])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await self.answer(send, 413, f"request body over the limit of {self.max_body} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await self.answer(send, 413, f"request body over the limit of {self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)


def make_app(
    model,
    batch_size: int,
    device: str,
    scorer_name: str = "hpsv3",
    cache_size: int = 512,
    token: str | None = None,
    max_body_bytes: int = 256 * 2**20,
    max_frames: int = 4096,
    max_pending: int = 65536,
    decode_threads: int = 4,
):
    """The service as an ASGI app: the FastAPI routes behind the Guard (token, body size)."""
    scorer = Scorer(model, batch_size)
    done: OrderedDict[str, dict] = OrderedDict()
    decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")  # PIL releases the GIL
    timing = {"decode_seconds": 0.0}

    def decode_all(items: list[Item]) -> list[list[Image.Image]]:
        start = time.perf_counter()
        flat = list(decoder.map(decode_frame, [f for item in items for f in item.frames]))
        timing["decode_seconds"] += time.perf_counter() - start
        out, at = [], 0
        for item in items:
            out.append(flat[at : at + len(item.frames)])
            at += len(item.frames)
        return out

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(scorer.run())
        yield
        task.cancel()

    app = FastAPI(title=f"{scorer_name} reward service", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "scorer": scorer_name,  # the client checks it serves the reward it asks for
            "device": device,
            "batch_size": batch_size,
            "scored": scorer.scored,
            "pid": os.getpid(),
            "max_body_bytes": max_body_bytes,  # the client packs its requests under these
            "max_frames": max_frames,
            "decode_seconds": timing["decode_seconds"],
            "forward_seconds": scorer.forward_seconds,
        }

    @app.post("/score")
    async def score(req: ScoreRequest) -> dict:
        if req.request_id in done:
            return done[req.request_id]
        frames = sum(len(item.frames) for item in req.items)
        if frames > max_frames:
            raise HTTPException(413, f"{frames} frames in one request, over the limit of {max_frames}; send fewer")
        if scorer.pending + frames > max_pending:
            raise HTTPException(503, "busy: too many frames waiting; retry", headers={"Retry-After": "1"})
        decoded = await asyncio.get_running_loop().run_in_executor(None, decode_all, req.items)  # off the loop
        try:
            scores = await asyncio.gather(
                *[
                    asyncio.gather(*[scorer.score(img, item.prompt) for img in frames])
                    for item, frames in zip(req.items, decoded)
                ]
            )
        except Exception as err:  # noqa: BLE001
            raise HTTPException(500, f"scoring failed: {type(err).__name__}: {err}") from None
        out = {"request_id": req.request_id, "scores": [list(s) for s in scores]}
        done[req.request_id] = out
        while len(done) > cache_size:
            done.popitem(last=False)
        return out

    return Guard(app, token, max_body_bytes)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_token(token_file: str | None) -> str | None:
    """$HPSV3_TOKEN, else the first line of --token-file / $HPSV3_TOKEN_FILE; None when neither is set."""
    if os.environ.get("HPSV3_TOKEN"):
        return os.environ["HPSV3_TOKEN"].strip()
    path = token_file or os.environ.get("HPSV3_TOKEN_FILE")
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise ValueError(f"--token-file: cannot read {path}: {err.strerror}") from None
    if not token:
        raise ValueError(f"--token-file: {path} is empty")
    return token


def main() -> None:
    p = argparse.ArgumentParser(description="reward service (HPSv3, PickScore, CLIP score)", allow_abbrev=False)
    p.add_argument("--scorer", choices=("hpsv3", "pickscore", "clip_score"), default="hpsv3")
    p.add_argument("--checkpoint", help="hpsv3: HPSv3 weights (.safetensors or .pth)")
    p.add_argument("--base-model", help="hpsv3: local Qwen2-VL directory (HPSv3's base model)")
    p.add_argument("--model", help="pickscore, clip_score: local CLIPModel directory (e.g. PickScore_v1)")
    p.add_argument("--processor", help="pickscore, clip_score: its tokenizer and image processor (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="beyond loopback a token is required (see --token-file)")
    p.add_argument("--token-file", default=None, help="file holding the shared token (or set $HPSV3_TOKEN)")
    p.add_argument("--max-body-mb", type=float, default=256, help="larger request bodies get 413")
    p.add_argument("--max-frames", type=int, default=4096, help="requests with more frames get 413")
    p.add_argument("--max-pending", type=int, default=65536, help="frames waiting beyond this get 503")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--batch-size", type=int, default=16, help="images per model forward")
    p.add_argument("--decode-threads", type=int, default=4, help="threads decoding a request's frames")
    args = p.parse_args()
    needed = ("checkpoint", "base_model") if args.scorer == "hpsv3" else ("model",)
    for name in needed:
        if getattr(args, name) is None:
            p.error(f"--{name.replace('_', '-')}: required by --scorer {args.scorer}")
        if not Path(getattr(args, name)).exists():
            p.error(f"--{name.replace('_', '-')}: {getattr(args, name)} does not exist")
    try:
        token = read_token(args.token_file)
        if token is None and not is_loopback(args.host):
            raise ValueError(
                f"--host {args.host}: beyond loopback the service needs a shared token "
                "($HPSV3_TOKEN, or --token-file / $HPSV3_TOKEN_FILE naming a file that holds it)"
            )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_torchvision()
    if args.scorer == "hpsv3":
        from hpsv3 import HPSv3RewardInferencer

        model = HPSv3RewardInferencer(
            config_path=inferencer_config(args.base_model, args.dtype),
            checkpoint_path=args.checkpoint,
            device=args.device,
        )
    else:
        from clip_models import CLIPScorer  # beside this file

        model = CLIPScorer(args.scorer, args.model, args.processor, args.device, args.dtype)
    print(f"{args.scorer} loaded on {args.device}; serving on http://{args.host}:{args.port}", flush=True)
    app = make_app(
        model,
        args.batch_size,
        args.device,
        args.scorer,
        token=token,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_frames=args.max_frames,
        max_pending=args.max_pending,
        decode_threads=args.decode_threads,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
