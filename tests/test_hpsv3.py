"""The HPSv3 reward service, for real: its own environment, a tiny random HPSv3 (Qwen2-VL with
HPSv3's ranknet head) built offline by hpsv3's own code, the HTTP server on loopback, the client
reward, a restart mid-scoring, and one training iteration of each algorithm on a tiny Wan."""

import base64
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from grpo_zoo.rewards.hpsv3 import HPSv3Reward, aggregate, encode_frame, pixels, sample_frames

from .helpers import ROOT, SERVICE, VENV, clean_env, free_port, merged, run_module

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, model_dir, port: int, batch_size: int = 4):
        self.model_dir, self.port, self.batch_size = model_dir, port, batch_size
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self) -> "Server":
        env = {**clean_env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [
            str(VENV / "bin" / "python"),
            str(SERVICE / "server.py"),
            "--checkpoint",
            str(self.model_dir / "HPSv3.safetensors"),
        ]
        cmd += ["--base-model", str(self.model_dir / "base"), "--device", "cpu", "--dtype", "fp32"]
        cmd += ["--port", str(self.port), "--batch-size", str(self.batch_size)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode()[-3000:])
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if json.loads(r.read())["status"] == "ok":
                        return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("the HPSv3 service did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tiny_hpsv3):
    srv = Server(tiny_hpsv3, free_port()).start()
    yield srv
    srv.kill()


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/score", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def videos(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 9, 24, 32, generator=g) * 2 - 1


def test_frame_sampling_and_aggregation():
    assert sample_frames(81, 4) == [0, 27, 53, 80] and sample_frames(3, 8) == [0, 1, 2]
    s = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0, 0.0, 6.0, 7.0, 8.0, 9.0]])
    assert aggregate(s, "mean", 0.3).item() == pytest.approx(4.5)
    assert aggregate(s, "top_fraction", 0.3).item() == pytest.approx(8.0)  # the best 3 of 10


def test_service_scores_batches_and_rejects_malformed(server):
    frame = encode_frame(pixels(videos(1), [0])[0, 0])
    status, out = post(server.url, {"request_id": "a", "items": [{"prompt": "a red car", "frames": [frame, frame]}]})
    assert status == 200 and out["request_id"] == "a" and len(out["scores"][0]) == 2
    assert out["scores"][0][0] == pytest.approx(out["scores"][0][1], abs=1e-5)  # the same frame, the same score
    bad = [
        (b"not json", 422),
        ({"items": [{"prompt": "x", "frames": [frame]}]}, 422),  # no request_id
        ({"request_id": "b", "items": []}, 422),
        ({"request_id": "c", "items": [{"prompt": "x", "frames": ["@@not base64@@"]}]}, 400),
        ({"request_id": "d", "items": [{"prompt": "x", "frames": [base64.b64encode(b"no image").decode()]}]}, 400),
        ({"request_id": "e", "items": [{"prompt": 3, "frames": "x"}]}, 422),
    ]
    for body, code in bad:
        status, detail = post(server.url, body)
        assert status == code, (body, status, detail)
    assert server.health()["status"] == "ok"  # still up
    # concurrent requests are batched together: 6 requests x 2 frames in fewer forwards than requests
    before = server.health()["scored"]
    results = {}

    def one(i):
        results[i] = post(server.url, {"request_id": f"c{i}", "items": [{"prompt": "a cat", "frames": [frame, frame]}]})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(r[0] == 200 for r in results.values()) and server.health()["scored"] - before == 12


def test_client_reward_survives_a_restart_without_dropping_or_duplicating(tiny_hpsv3):
    port = free_port()
    srv = Server(tiny_hpsv3, port).start()
    try:
        v, prompts = videos(6, seed=1), [f"prompt {i % 3}" for i in range(6)]
        client = HPSv3Reward(url=srv.url, frames=3, batch_size=2, retries=8, backoff=0.5, max_in_flight=1)
        reference = client(v, prompts)
        assert reference["hpsv3"].shape == (6,)
        # the server dies after the first request of the next scoring and comes back
        fut = client.submit(v, prompts)
        time.sleep(0.05)
        srv.kill()
        srv.start()
        again = fut.result(timeout=300)
        assert client.stats["retries"] >= 1
        assert torch.allclose(again["hpsv3"], reference["hpsv3"], atol=1e-5)  # same videos, same order, no loss
        srv.kill()
        down = HPSv3Reward(url=srv.url, retries=1, backoff=0.1)
        with pytest.raises(RuntimeError, match="failed 2 times"):
            down(v[:1], prompts[:1])
    finally:
        srv.kill()


@pytest.mark.parametrize(
    "algorithm",
    [
        ["algorithm.name=flow_grpo"],
        ["algorithm.name=flow_grpo_fast", "algorithm.window=1"],
        ["algorithm.name=flash_grpo"],
    ],
)
def test_one_iteration_on_a_tiny_wan_with_hpsv3(algorithm, server, tmp_path):
    from grpo_zoo.models.tiny_wan import write_tiny_wan
    from grpo_zoo.runs import RunDir

    from .helpers import TINY_WAN_ARGS

    model = write_tiny_wan(tmp_path / "tiny-wan")
    run = tmp_path / "run"
    out = run_module(
        "grpo_zoo.train",
        str(ROOT / "experiments/wan2.1/base.yaml"),  # 1.3b.yaml fixes Flash-GRPO's k range for 20 steps
        *merged(
            "model.arch=wan2.1-t2v-1.3b",
            f"model.path={model}",
            f"run_dir={run}",
            f"reward.options.url={server.url}",
            "reward.options.frames=3",
            "reward.options.batch_size=4",
            *TINY_WAN_ARGS,
            "data.prompts=experiments/wan2.1/prompts/train.txt",
            "engine.zero_stage=0",
            "engine.precision=fp32",
            "sampling.eval_steps=2",
            "budget.device_hours=null",
            "budget.steps=1",
            *algorithm,
        ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = RunDir(run).rows()
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 1 and torch.isfinite(torch.tensor(train[0]["reward/mean"]))
    assert "reward/hpsv3_frame_mean" in train[0] and train[0]["compute/backward"] > 0
    assert RunDir(run).is_complete()


INPROCESS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from server import decode_frame, import_torchvision, inferencer_config
import_torchvision()
import torch
from hpsv3 import HPSv3RewardInferencer
model = HPSv3RewardInferencer(
    config_path=inferencer_config(sys.argv[2] + "/base", "fp32"), checkpoint_path=sys.argv[2] + "/HPSv3.safetensors", device="cpu"
)
job = json.load(open(sys.argv[3]))
with torch.no_grad():  # one frame at a time: no batch of the service's
    scores = [[float(model.reward([decode_frame(f)], [p])[0, 0]) for f in frames] for p, frames in job]
print(json.dumps(scores))
"""


def test_tiny_hpsv3_at_480x832_scores_as_in_process(server, tiny_hpsv3, tmp_path):
    """Frames at the paper's size through the client and the service equal the tiny HPSv3 called
    in process on the same JPEG-decoded frames (to 1e-4: the service batches frames of several
    prompts, whose padded text changes float sums in the last bits)."""
    g = torch.Generator().manual_seed(3)
    v = torch.nn.functional.interpolate(torch.rand(2 * 3, 3, 4, 6, generator=g), size=(480, 832), mode="bilinear")
    v = (v.view(2, 3, 3, 480, 832).permute(0, 2, 1, 3, 4) * 2 - 1).contiguous()  # [2, 3, 3 frames, 480, 832]
    prompts = ["a red car", "a cat walking on the blue car"]
    client = HPSv3Reward(url=server.url, frames="all", batch_size=1, request_frames=2)  # videos span requests
    client.check()
    got = client.submit_frames(v, prompts).result(timeout=600)
    px = pixels(v, [0, 1, 2])
    job = [[p, [encode_frame(px[i, f]) for f in range(3)]] for i, p in enumerate(prompts)]
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", INPROCESS, str(SERVICE), str(tiny_hpsv3), str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        env={**clean_env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    want = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    assert got.shape == (2, 3) and client.stats["requests"] == 4
    assert torch.allclose(got, want, atol=1e-4), (got, want)
