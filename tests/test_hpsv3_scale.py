"""The paper's HPSv3 load through the service: 8 videos of 81 frames at 480x832 in one call.

The service is server.py's own app (Guard, limits, decoding off the loop, batching) in front of
the stand-in model (tests/helpers.py STANDIN: mean pixel / 255 + len(prompt) / 100), because
the tiny random HPSv3 costs 0.3-0.6 s per 480x832 frame on this 2-core CPU (its image
processor resizes every frame to 256 x 28 x 28 pixels): 648 frames would take minutes. The
tiny HPSv3 itself is compared with in-process scoring in tests/test_hpsv3.py. Here every frame
score comes back, once, in its place, and equals the stand-in's score of the JPEG-decoded frame
computed in this process (exactly: the same PIL decodes the same bytes).
"""

import base64
import io

import numpy as np
import pytest
import torch

from grpo_zoo.errors import ConfigError
from grpo_zoo.rewards.hpsv3 import HPSv3Reward, encode_frame, pixels

from .helpers import StandinService

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

VIDEOS, FRAMES, H, W = 8, 81, 480, 832


def paper_videos() -> torch.Tensor:
    """uint8 [8, 3, 81, 480, 832]: smooth colour fields whose brightness differs in every frame
    of every video (a frame's score names it: a misplaced score cannot go unseen)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(VIDEOS, 3, 1, 6, 10, generator=g)
    field = torch.nn.functional.interpolate(coarse[:, :, 0], size=(H, W), mode="bilinear")[:, :, None]
    level = torch.arange(VIDEOS * FRAMES, dtype=torch.float32).view(VIDEOS, 1, FRAMES, 1, 1) / (VIDEOS * FRAMES)
    return (40 + 120 * field + 90 * level).round().to(torch.uint8)


def standin_score(b64: str, prompt: str) -> float:
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    return float(torch.tensor(float(np.asarray(img).mean()) / 255 + len(prompt) / 100, dtype=torch.float32))


def test_eight_paper_videos_through_the_service_every_score_once_and_in_place():
    # a 6 MiB / 100-frame service: the ~40 MiB of JPEG go in several requests, videos split across them
    srv = StandinService(max_body=6 << 20, max_frames=100, max_pending=1 << 16).start()
    try:
        v = paper_videos()
        prompts = [f"a video number {i}" + "!" * i for i in range(VIDEOS)]
        client = HPSv3Reward(url=srv.url, frames="all", batch_size=4, max_in_flight=2)
        client.check()  # takes the service's limits
        assert (client.max_bytes, client.max_frames) == (6 << 20, 100)
        got = client.submit_frames(v, prompts).result(timeout=600)
        assert got.shape == (VIDEOS, FRAMES) and torch.isfinite(got).all()
        assert client.stats["requests"] >= VIDEOS * FRAMES // 100 + 1 and client.stats["retries"] == 0
        px = pixels(v, list(range(FRAMES)))
        want = torch.tensor(
            [[standin_score(encode_frame(px[i, f]), prompts[i]) for f in range(FRAMES)] for i in range(VIDEOS)]
        )
        assert torch.equal(got, want)  # every frame once, in its place, the in-process value
        assert len(set(got.flatten().tolist())) == VIDEOS * FRAMES  # and every score names one frame
        _, info = health(srv.url)
        assert info["scored"] == VIDEOS * FRAMES and info["decode_seconds"] > 0
        # a client asking for requests larger than the service takes is refused before any scoring
        with pytest.raises(ConfigError, match=r"request_mb: 8 MiB requests are over the limit .* \(6 MiB"):
            HPSv3Reward(url=srv.url, request_mb=8).check()
        with pytest.raises(ConfigError, match="request_frames: 200 frames per request are over the limit"):
            HPSv3Reward(url=srv.url, request_frames=200).check()
    finally:
        srv.kill()


def health(url: str):
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
        return r.status, json.loads(r.read())
