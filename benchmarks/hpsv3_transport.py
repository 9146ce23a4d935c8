"""HPSv3 transport per video: `python -m benchmarks.hpsv3_transport [--videos 8] [--frames 81] [--quick]`.

Frames of 480x832 (the paper's Wan2.1 size), as a natural image (matplotlib's sample photo,
panned a few pixels per frame) and as uniform noise (JPEG's worst case), encoded three ways:
PNG (what the client sent before), JPEG at quality 75 (what both references send and the client
sends now) and raw uint8 (base64, no codec). Per 81-frame video: encoding time on one thread and
on the client's encoder threads, and the bytes a request carries.

Then, when the service's environment is there (.venv-hpsv3, grpo_zoo/rewards/hpsv3_service/
setup.sh), the real service with the tiny random HPSv3 (make_tiny.py) on loopback: `--videos`
natural videos through the client in one call (encode, pack, send, decode, score), the upload
alone (the same request bodies POSTed to /health: the service's guard reads the whole body,
then the route answers 405 without decoding), and the service's own decode and forward
seconds (its /health counters). The forward is the tiny stand-in's on this CPU, not the 7B
model's on a GPU: it shows where the time goes around the model, not the model's cost.
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from grpo_zoo.errors import cli

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "grpo_zoo" / "rewards" / "hpsv3_service"
VENV = ROOT / ".venv-hpsv3"
H, W = 480, 832


def natural_video(frames: int, seed: int = 0) -> np.ndarray:
    """[F, H, W, 3] uint8: matplotlib's sample photo at 480x832, panned 3 px per frame."""
    import matplotlib
    from PIL import Image

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    wide = np.asarray(photo.resize((W + 3 * frames, H), Image.BICUBIC))
    shift = np.random.default_rng(seed).integers(0, 3 * frames)
    return np.stack([np.roll(wide, int(shift), axis=1)[:, 3 * f : 3 * f + W] for f in range(frames)])


def noise_video(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, H, W, 3), dtype=np.uint8)


def encoders(quality: int) -> dict:
    from PIL import Image

    def png(f):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue())

    def jpeg(f):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=quality)
        return base64.b64encode(buf.getvalue())

    return {"png": png, f"jpeg q{quality}": jpeg, "raw uint8": lambda f: base64.b64encode(f.tobytes())}


def encode_rows(frames: int, quality: int = 75, threads: int = 4) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    rows = []
    pool = ThreadPoolExecutor(threads)
    for content, video in (("natural", natural_video(frames)), ("noise", noise_video(frames))):
        for name, fn in encoders(quality).items():
            start = time.perf_counter()
            sizes = [len(fn(f)) for f in video]
            serial = time.perf_counter() - start
            start = time.perf_counter()
            list(pool.map(fn, video))
            pooled = time.perf_counter() - start
            rows.append(
                {
                    "content": content,
                    "format": name,
                    "encode_s_1_thread": serial,
                    f"encode_s_{threads}_threads": pooled,
                    "ms_per_frame": 1000 * serial / frames,
                    "mb_per_video": sum(sizes) / 2**20,
                    "videos_per_256mib_request": 256 * 2**20 / sum(sizes),
                }
            )
    pool.shutdown()
    return rows


def start_service(model_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        str(VENV / "bin" / "python"),
        str(SERVICE / "server.py"),
        "--checkpoint",
        str(model_dir / "HPSv3.safetensors"),
    ]
    cmd += ["--base-model", str(model_dir / "base"), "--device", "cpu", "--dtype", "fp32", "--port", str(port)]
    cmd += ["--batch-size", "2"]  # the tiny model's SDPA vision attention is quadratic in the batch on CPU
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            health(f"http://127.0.0.1:{port}")
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the HPSv3 service did not start")


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        return json.loads(r.read())


def upload_seconds(url: str, bodies: list[bytes]) -> float:
    start = time.perf_counter()
    for data in bodies:
        req = urllib.request.Request(f"{url}/health", data=data, headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=600).read()
        except urllib.error.HTTPError as err:
            assert err.code == 405, err.code  # read whole by the guard, refused by the route
    return time.perf_counter() - start


def service_rows(videos: int, frames: int) -> dict:
    import socket

    import grpo_zoo.rewards.hpsv3 as hp

    out = Path(tempfile.mkdtemp(prefix="tiny-hpsv3-"))
    made = subprocess.run(
        [str(VENV / "bin" / "python"), str(SERVICE / "make_tiny.py"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if made.returncode:
        raise RuntimeError(made.stderr[-2000:])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = start_service(out, port)
    try:
        clip = torch.from_numpy(np.stack([natural_video(frames, seed=i) for i in range(videos)]))
        clip = clip.permute(0, 4, 1, 2, 3)  # uint8 [B, 3, F, H, W], as the client takes them
        prompts = [f"a red car {i}" for i in range(videos)]
        client = hp.HPSv3Reward(url=url, frames="all", batch_size=1, max_in_flight=2)
        client.check()
        before = health(url)
        start = time.perf_counter()
        fut = client.submit(clip, prompts)
        returned = time.perf_counter() - start  # what the trainer waits before it goes on
        fut.result()
        total = time.perf_counter() - start
        after = health(url)
        # the same request bodies again, upload only
        bodies = []
        for v in range(videos):
            px = hp.pixels(clip[v : v + 1], list(range(frames)))
            enc = [hp.encode_frame(f) for f in px[0]]
            for request in hp.pack([[len(e) for e in enc]], prompts[v : v + 1], client.max_bytes, client.max_frames):
                items = [{"prompt": prompts[v], "frames": enc[a:b]} for _, a, b in request]
                bodies.append(json.dumps({"request_id": "x", "items": items}).encode())
        upload = upload_seconds(url, bodies)
        return {
            "videos": videos,
            "frames": frames,
            "submit_returns_s": returned,
            "end_to_end_s_per_video": total / videos,
            "upload_s_per_video": upload / videos,
            "mb_per_video": sum(map(len, bodies)) / videos / 2**20,
            "requests": client.stats["requests"],
            "service_decode_s_per_video": (after["decode_seconds"] - before["decode_seconds"]) / videos,
            "service_forward_s_per_video": (after["forward_seconds"] - before["forward_seconds"]) / videos,
        }
    finally:
        proc.kill()
        proc.wait()


def markdown(res: dict) -> str:
    rows = res["encode"]
    threads = [k for k in rows[0] if k.startswith("encode_s_") and not k.endswith("1_thread")][0]
    lines = [
        f"Per video of {res['frames']} frames at 480x832:",
        "",
        f"| content | format | encode, 1 thread (s) | encode, {threads.split('_')[2]} threads (s) | ms per frame "
        "| MiB per video (base64) | videos per 256 MiB request |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['content']} | {r['format']} | {r['encode_s_1_thread']:.2f} | {r[threads]:.2f} | "
            f"{r['ms_per_frame']:.1f} | {r['mb_per_video']:.1f} | {r['videos_per_256mib_request']:.1f} |"
        )
    s = res.get("service")
    if s:
        lines += [
            "",
            f"Through the service (tiny random HPSv3 on this CPU, loopback; {s['videos']} natural videos of "
            f"{s['frames']} frames in one call, {s['requests']} requests):",
            "",
            "| per video | seconds |",
            "|---|---|",
            f"| submit() returns (rounding to uint8; the rest runs on the client's threads) | "
            f"{s['submit_returns_s'] / s['videos']:.3f} |",
            f"| upload of the request bodies ({s['mb_per_video']:.1f} MiB), loopback | {s['upload_s_per_video']:.2f} |",
            f"| service: JPEG decode (its decode threads) | {s['service_decode_s_per_video']:.2f} |",
            f"| service: model forward (tiny stand-in, CPU) | {s['service_forward_s_per_video']:.2f} |",
            f"| end to end, pipelined (encode, send, decode, score) | {s['end_to_end_s_per_video']:.2f} |",
        ]
    elif "service_skipped" in res:
        lines += ["", f"Service part skipped: {res['service_skipped']}"]
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    from grpo_zoo.errors import ArgParser, ConfigError

    ap = ArgParser(prog="python -m benchmarks.hpsv3_transport", description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8, help="videos sent through the service in one call")
    ap.add_argument("--frames", type=int, default=81, help="frames per video")
    ap.add_argument("--quick", action="store_true", help="2 videos of 21 frames, encoding of 21 frames")
    ap.add_argument("--no-service", action="store_true", help="encoding only")
    ap.add_argument("--format", choices=("md", "json"), default="md")
    args = ap.parse_args(argv)
    if args.videos < 1 or args.frames < 1:
        raise ConfigError(f"--videos, --frames: at least 1, got {args.videos}, {args.frames}")
    if args.quick:
        args.videos, args.frames = 2, 21
    from benchmarks.common import machine

    res = {"machine": machine(), "frames": args.frames, "encode": encode_rows(args.frames)}
    if args.no_service:
        res["service_skipped"] = "--no-service"
    elif not (VENV / "bin" / "python").exists():
        res["service_skipped"] = "no .venv-hpsv3 (bash grpo_zoo/rewards/hpsv3_service/setup.sh)"
    else:
        res["service"] = service_rows(args.videos, args.frames)
    m = res["machine"]
    if args.format == "json":
        print(json.dumps(res, indent=1))
    else:
        print(f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}.\n")
        print(markdown(res))
    print(f"median ms per frame: {statistics.median(r['ms_per_frame'] for r in res['encode']):.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
