"""PickScore and CLIP score behind the reward service's protocol, for real: a tiny random CLIPModel
(the architecture PickScore_v1 and CLIP load) written with save_pretrained, one server.py per
scorer on loopback in the service's own environment, their clients, and two iterations of
flash_grpo trained on a weighted pair of them; a service that is down, or that serves another
scorer, is one line and exit 2 before any compute; one that dies mid-run stops the run cleanly."""

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

from grpo_zoo import rewards
from grpo_zoo.errors import ConfigError

from .helpers import ROOT, SERVICE, SMALL, VENV, clean_env, free_port, merged, run_module

pytestmark = pytest.mark.slow


def start(scorer: str, model: str, port: int):
    env = {**clean_env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(VENV / "bin" / "python"), str(SERVICE / "server.py"), "--scorer", scorer, "--model", model]
    cmd += ["--device", "cpu", "--dtype", "fp32", "--port", str(port), "--batch-size", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-3000:])
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"the {scorer} service did not start")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "tiny-clip"
    code = f"import sys; sys.path.insert(0, {str(SERVICE)!r}); import server; server.import_torchvision(); "
    code += f"from clip_models import write_tiny_clip; write_tiny_clip({str(out)!r})"
    subprocess.run([str(VENV / "bin" / "python"), "-c", code], check=True, env={**clean_env(), "HF_HUB_OFFLINE": "1"})
    return out


@pytest.fixture(scope="module")
def services(tiny_clip):
    procs, urls = [], {}
    for scorer in ("pickscore", "clip_score"):
        proc, urls[scorer] = start(scorer, str(tiny_clip), free_port())
        procs.append(proc)
    yield urls
    for p in procs:
        p.kill()
        p.wait()


def videos(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 5, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_each_client_scores_per_frame_as_the_model_does_in_process(services, tiny_clip):
    """The service's score of each frame equals the CLIP model's own, computed here from the
    same JPEG-decoded frames (PickScore: logit_scale.exp() cos / 26; CLIP score: 100 cos, >= 0)."""
    from grpo_zoo.rewards.hpsv3 import JPEG_QUALITY, encode_frame, pixels, sample_frames

    prompts = ["a red circle moving left", "a blue square", "a cat"]
    vids = videos(3)
    for scorer, url in services.items():
        client = rewards.get(scorer, url=url, frames="all")
        client.check()
        out = client(vids, prompts)
        assert set(out) == {scorer, f"{scorer}_frame_mean"} and out[scorer].shape == (3,)
        code = (
            f"import sys, json, base64, io; sys.path.insert(0, {str(SERVICE)!r}); import server; "
            "server.import_torchvision(); from clip_models import CLIPScorer; from PIL import Image; "
            f"s = CLIPScorer({scorer!r}, {str(tiny_clip)!r}); d = json.load(sys.stdin); "
            "ims = [Image.open(io.BytesIO(base64.b64decode(f))).convert('RGB') for f in d['frames']]; "
            "print(json.dumps(s.reward(ims, d['prompts'])[:, 0].tolist()))"
        )
        idx = sample_frames(5, "all")
        frames = [encode_frame(f, JPEG_QUALITY) for v in pixels(vids, idx) for f in v]
        body = json.dumps({"frames": frames, "prompts": [p for p in prompts for _ in idx]})
        got = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", code], input=body, capture_output=True, text=True,
            env={**clean_env(), "HF_HUB_OFFLINE": "1"}, check=True,
        )  # fmt: skip
        expected = torch.tensor(json.loads(got.stdout.strip().splitlines()[-1])).view(3, 5)
        torch.testing.assert_close(out[f"{scorer}_frame_mean"], expected.mean(1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[scorer], expected.mean(1), rtol=1e-4, atol=1e-4)  # aggregate: mean
        client.close() if hasattr(client, "close") else None


def test_a_client_pointed_at_another_scorer_is_refused(services):
    with pytest.raises(ConfigError, match="scores clip_score, not pickscore"):
        rewards.get("pickscore", url=services["clip_score"]).check()


def test_flash_grpo_trains_two_iterations_on_a_weighted_pair_of_services(services, tmp_path):
    from grpo_zoo.runs import RunDir

    run = tmp_path / "run"
    options = f"{{pickscore: {{url: '{services['pickscore']}', frames: 3}}, clip_score: {{url: '{services['clip_score']}', frames: 3}}}}"
    out = run_module(
        "grpo_zoo.train",
        *merged(
            str(ROOT / "experiments/toy/base.yaml"), *SMALL, f"run_dir={run}", "algorithm.name=flash_grpo",
            "reward.name={pickscore: 1.0, clip_score: 0.01}", f"reward.options={options}",
        ),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in RunDir(run).rows() if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward/mean"] == pytest.approx(r["reward/pickscore"] + 0.01 * r["reward/clip_score"], rel=1e-5)
        assert {"reward/pickscore_frame_mean", "reward/clip_score_frame_mean"} <= set(r)
    assert RunDir(run).is_complete()


def test_a_service_down_is_one_line_before_compute_and_one_dying_mid_run_stops_cleanly(services, tiny_clip, tmp_path):
    from grpo_zoo.runs import RunDir

    dead = f"http://127.0.0.1:{free_port()}"
    out = run_module(
        "grpo_zoo.train",
        *merged(
            str(ROOT / "experiments/toy/base.yaml"), *SMALL, f"run_dir={tmp_path / 'down'}",
            "reward.name={pickscore: 1.0, toy_hps: 1.0}", f"reward.options={{pickscore: {{url: '{dead}'}}}}",
        ),
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "PickScore service" in out.stderr and "unreachable" in out.stderr
    assert not (tmp_path / "down").exists()
    # a service of its own that is killed after the first iteration: retried, then the run stops
    # with its completed rows and checkpoint intact, and resumes once the service is back
    port = free_port()
    proc, url = start("pickscore", str(tiny_clip), port)
    run = tmp_path / "run"
    args = merged(
        str(ROOT / "experiments/toy/base.yaml"), *SMALL, f"run_dir={run}", "budget.steps=3", "checkpoint_every=1",
        "reward.name={pickscore: 1.0, toy_hps: 1.0}", f"reward.options={{pickscore: {{url: '{url}', retries: 1, backoff: 0.1}}}}",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "grpo_zoo.train", *args]
    trainer = subprocess.Popen(
        cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        r["kind"] == "train" for r in (RunDir(run).rows() if run.exists() else [])
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, err = trainer.communicate(timeout=300)
    assert trainer.returncode != 0 and "PickScore service" in err, err[-2000:]
    kept = [r for r in RunDir(run).rows() if r["kind"] == "train"]
    assert kept and [r["step"] for r in kept] == list(range(1, len(kept) + 1))
    proc, url2 = start("pickscore", str(tiny_clip), port)
    try:
        again = run_module("grpo_zoo.train", *args)
        assert again.returncode == 0, again.stderr[-3000:]
        rows = [r for r in RunDir(run).rows() if r["kind"] == "train"]
        assert [r["step"] for r in rows] == [1, 2, 3]  # no row lost, none twice
    finally:
        proc.kill()
        proc.wait()


# -- the VLM judge over an OpenAI-compatible server ------------------------------------------------
def test_the_rating_is_the_probability_weighted_digit():
    from grpo_zoo.rewards.hpsv3 import ServiceError
    from grpo_zoo.rewards.vlm_judge import rating

    tops = [{"token": "9", "logprob": -0.1}, {"token": "x", "logprob": -1.0}, {"token": "1", "logprob": -2.0}]
    choice = {"message": {"content": "9"}, "logprobs": {"content": [{"token": "9", "top_logprobs": tops}]}}
    p9, p1 = 2.718281828**-0.1, 2.718281828**-2.0
    assert rating(choice) == pytest.approx(((9 * p9 + p1) / (p9 + p1) - 1) / 8, rel=1e-6)
    assert rating({"message": {"content": "I'd say 7."}}) == pytest.approx(6 / 8)  # no log-probs: the digit
    with pytest.raises(ServiceError, match="no rating"):
        rating({"message": {"content": "great"}})


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    env = {**clean_env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [str(VENV / "bin" / "python"), str(SERVICE / "make_tiny.py"), str(out), "--judge"], check=True, env=env
    )
    key = out / "key"
    key.write_text("sesame\n")
    port = free_port()
    cmd = [str(VENV / "bin" / "python"), str(SERVICE / "judge_server.py"), "--model", str(out / "base")]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--api-key-file", str(key)], env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-3000:])
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
        except urllib.error.HTTPError:  # 401 without the key: it is up
            break
        except OSError:
            time.sleep(0.3)
    yield url, key
    proc.kill()
    proc.wait()


def test_the_judge_client_checks_its_server_and_rates_each_video(judge):
    url, key = judge
    with pytest.raises(ConfigError, match="answered 401 refused our key"):
        rewards.get("vlm_judge", url=url, model="judge").check()
    client = rewards.get("vlm_judge", url=url, model="judge", key_file=str(key))
    client.check()
    with pytest.raises(ConfigError, match="serves judge, not 'gpt-judge'"):
        rewards.get("vlm_judge", url=url, model="gpt-judge", key_file=str(key)).check()
    out = client(videos(3), ["a red circle moving left", "a blue square", "a cat"])["vlm_judge"]
    assert out.shape == (3,) and ((out >= 0) & (out <= 1)).all()
    again = client(videos(3), ["a red circle moving left", "a blue square", "a cat"])["vlm_judge"]
    torch.testing.assert_close(out, again)  # temperature 0, one forward: the same rating
    other = client(videos(3, seed=1), ["a red circle moving left", "a blue square", "a cat"])["vlm_judge"]
    assert not torch.equal(out, other)  # it looks at the frames


def test_flash_grpo_trains_on_a_toy_reward_weighted_with_the_judge(judge, tmp_path):
    from grpo_zoo.runs import RunDir

    url, key = judge
    run = tmp_path / "run"
    options = f"{{vlm_judge: {{url: '{url}', model: judge, key_file: '{key}', frames: 2}}}}"
    out = run_module(
        "grpo_zoo.train",
        *merged(
            str(ROOT / "experiments/toy/base.yaml"), *SMALL, f"run_dir={run}", "algorithm.name=flash_grpo",
            "reward.name={toy_hps: 1.0, vlm_judge: 0.5}", f"reward.options={options}",
        ),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in RunDir(run).rows() if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward/mean"] == pytest.approx(r["reward/toy_hps"] + 0.5 * r["reward/vlm_judge"], rel=1e-5)
