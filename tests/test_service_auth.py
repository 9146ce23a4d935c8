"""The HPSv3 service guarded for a cluster: token (401), size limits (413), busy (503), loopback by
default, no token on the command line; and the client's token and retries.

The service here is server.py's own app factory (`make_app`, with its Guard) served by uvicorn
on loopback in a separate process, with a stand-in for the HPSv3 model (a brightness score) so
that it runs in the project's environment; the last test does the same against the real
service with a tiny HPSv3 (its own environment, slow).
"""

import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

from grpo_zoo.errors import ConfigError
from grpo_zoo.rewards.hpsv3 import HPSv3Reward, ServiceError, encode_frame, pixels

from .helpers import ROOT, StandinService, clean_env, free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SERVER = ROOT / "grpo_zoo" / "rewards" / "hpsv3_service" / "server.py"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def guarded():
    srv = StandinService(max_body=64 * 1024, max_frames=8, env={"HPSV3_TOKEN": TOKEN}).start()
    yield srv
    srv.kill()


def request(url, path="/score", body=None, token=None, scheme="Bearer"):
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    req = urllib.request.Request(f"{url}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers


def answers(url: str) -> bool:
    """The service is up and takes our token."""
    try:
        return request(url, "/health", token=TOKEN)[0] == 200
    except OSError:  # not listening yet
        return False


def frame(seed=0) -> str:
    g = torch.Generator().manual_seed(seed)
    return encode_frame(pixels(torch.rand(1, 3, 1, 16, 16, generator=g) * 2 - 1, [0])[0, 0])


def body(n_frames=2, rid="r1"):
    return {"request_id": rid, "items": [{"prompt": "a red car", "frames": [frame(i) for i in range(n_frames)]}]}


def videos(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 5, 16, 16, generator=g) * 2 - 1


def test_without_or_with_a_wrong_token_the_answer_is_401(guarded):
    for token, scheme in (
        (None, "Bearer"),
        ("wrong", "Bearer"),
        (TOKEN[:-1], "Bearer"),
        ("", "Bearer"),
        (TOKEN, "Basic"),
    ):
        status, detail, headers = request(guarded.url, body=body(), token=token, scheme=scheme)
        assert status == 401 and "token" in detail["detail"], (token, scheme, status)
        assert headers["WWW-Authenticate"] == "Bearer"
    assert request(guarded.url, "/health")[0] == 401  # nothing is answered without the token
    status, out, _ = request(guarded.url, body=body(), token=TOKEN)
    assert status == 200 and out["request_id"] == "r1" and len(out["scores"][0]) == 2
    status, info, _ = request(guarded.url, "/health", token=TOKEN)
    assert status == 200 and info["status"] == "ok"


def test_oversized_bodies_and_batches_get_413(guarded):
    big = json.dumps({"request_id": "big", "items": [{"prompt": "x" * 100_000, "frames": [frame()]}]}).encode()
    status, detail, _ = request(guarded.url, body=big, token=TOKEN)
    assert status == 413 and "65536 bytes" in detail["detail"]
    # a chunked body declares no length: it is counted as it arrives
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=60)
    chunks = (big[i : i + 8192] for i in range(0, len(big), 8192))
    conn.request("POST", "/score", body=chunks, headers={"Authorization": f"Bearer {TOKEN}"}, encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    status, detail, _ = request(guarded.url, body=body(n_frames=9, rid="nine"), token=TOKEN)  # max 8 frames
    assert status == 413 and "9 frames" in detail["detail"]
    assert request(guarded.url, body=body(n_frames=8, rid="eight"), token=TOKEN)[0] == 200
    # the token comes first: an unauthenticated oversized body is a 401, never read
    assert request(guarded.url, body=big)[0] == 401


def test_client_sends_the_token_from_a_file_and_reports_401_and_413(guarded, tmp_path, monkeypatch):
    monkeypatch.delenv("HPSV3_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    v, prompts = videos(4), ["a", "b", "c", "d"]
    client = HPSv3Reward(url=guarded.url, frames=2, batch_size=2, token_file=str(token_file), retries=3, backoff=0.05)
    client.check()
    out = client(v, prompts)
    assert out["hpsv3"].shape == (4,) and client.stats == {"requests": 2, "retries": 0}
    monkeypatch.setenv("HPSV3_TOKEN", TOKEN)  # the environment variable works too
    assert torch.equal(HPSv3Reward(url=guarded.url, frames=2, batch_size=2)(v, prompts)["hpsv3"], out["hpsv3"])
    monkeypatch.setenv("HPSV3_TOKEN", "wrong")
    wrong = HPSv3Reward(url=guarded.url, frames=2, batch_size=4, retries=3, backoff=0.05)
    with pytest.raises(ConfigError, match="token"):
        wrong.check()
    with pytest.raises(ServiceError, match="401"):
        wrong(v, prompts)
    assert wrong.stats["requests"] == 1  # a refused token is not retried
    monkeypatch.setenv("HPSV3_TOKEN", TOKEN)
    with pytest.raises(ServiceError, match="413.*request_frames"):
        HPSv3Reward(url=guarded.url, frames=5, batch_size=2)(v, prompts)  # 10 frames per request, max 8


@pytest.mark.slow
def test_client_retries_a_restarting_service_without_losing_or_duplicating(tmp_path, monkeypatch):
    """Killed mid-scoring and started again on another port (its new address in the url file)."""
    monkeypatch.setenv("HPSV3_TOKEN", TOKEN)
    first = StandinService(env={"HPSV3_TOKEN": TOKEN, "STANDIN_DELAY": "0.2"}).start()
    url_file = tmp_path / "url"
    url_file.write_text(first.url)
    second = StandinService(env={"HPSV3_TOKEN": TOKEN})
    try:
        v, prompts = videos(6, seed=1), [f"prompt {i}" for i in range(6)]
        client = HPSv3Reward(url="http://127.0.0.1:9", url_file=str(url_file), frames=3, batch_size=1, retries=8)
        client.backoff, client.pool._max_workers = 0.2, 1
        reference = client(v, prompts)
        fut = client.submit(v, prompts)
        time.sleep(0.3)  # the first request is being scored
        first.kill()
        second.start()
        url_file.write_text(second.url + "\n")
        again = fut.result(timeout=120)
        assert client.stats["retries"] >= 1
        assert torch.equal(again["hpsv3"], reference["hpsv3"])  # every video, in order, once
    finally:
        first.kill()
        second.kill()


@pytest.mark.slow
def test_a_busy_service_answers_503_and_the_client_resubmits(monkeypatch):
    monkeypatch.setenv("HPSV3_TOKEN", TOKEN)
    srv = StandinService(max_pending=3, env={"HPSV3_TOKEN": TOKEN, "STANDIN_DELAY": "0.3"}).start()
    try:
        v, prompts = videos(6, seed=2), [f"p{i}" for i in range(6)]
        client = HPSv3Reward(url=srv.url, frames=3, batch_size=1, max_in_flight=3, retries=10, backoff=0.1)
        out = client(v, prompts)
        assert client.stats["retries"] >= 1  # two of three concurrent requests met a full queue
        solo = HPSv3Reward(url=srv.url, frames=3, batch_size=1, max_in_flight=1)
        assert torch.equal(out["hpsv3"], solo(v, prompts)["hpsv3"])
        _, info, _ = request(srv.url, "/health", token=TOKEN)
        assert info["scored"] == 2 * 6 * 3  # each frame scored once per call: a 503 scores nothing
    finally:
        srv.kill()


def run_server(*args, env=None):
    return subprocess.run(
        [sys.executable, str(SERVER), *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in {**clean_env(), **(env or {})}.items() if not k.startswith("HPSV3_TOKEN")},
        timeout=120,
    )


def test_beyond_loopback_the_service_refuses_to_start_without_a_token(tmp_path):
    (tmp_path / "ckpt").write_text("")
    (tmp_path / "base").mkdir()
    paths = ["--checkpoint", str(tmp_path / "ckpt"), "--base-model", str(tmp_path / "base")]
    for host in ("0.0.0.0", "10.1.2.3", "node17"):
        out = run_server(*paths, "--host", host)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "token" in lines[0] and host in lines[0], out.stderr
    out = run_server(*paths, "--host", "0.0.0.0", "--token", "abc")  # never on the command line
    assert out.returncode == 2 and "unrecognized arguments: --token" in out.stderr
    (tmp_path / "empty").write_text("\n")
    out = run_server(*paths, "--host", "0.0.0.0", "--token-file", str(tmp_path / "empty"))
    assert out.returncode == 2 and "is empty" in out.stderr
    out = run_server(*paths, "--host", "0.0.0.0", "--token-file", str(tmp_path / "missing"))
    assert out.returncode == 2 and "cannot read" in out.stderr


@pytest.mark.slow
def test_the_real_service_with_a_token(tiny_hpsv3, tmp_path, monkeypatch):  # noqa: F811
    from .helpers import SERVICE, VENV

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.delenv("HPSV3_TOKEN", raising=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(VENV / "bin" / "python"),
        str(SERVICE / "server.py"),
        "--checkpoint",
        str(tiny_hpsv3 / "HPSv3.safetensors"),
    ]
    cmd += ["--base-model", str(tiny_hpsv3 / "base"), "--device", "cpu", "--dtype", "fp32", "--port", str(port)]
    cmd += ["--token-file", str(token_file), "--max-frames", "4"]
    env = {**clean_env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not answers(url):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the HPSv3 service did not start"
            time.sleep(0.5)
        assert request(url, body=body())[0] == 401
        assert request(url, body=body(), token="nope")[0] == 401
        assert request(url, body=body(n_frames=5), token=TOKEN)[0] == 413
        client = HPSv3Reward(url=url, frames=2, batch_size=2, token_file=str(token_file))
        client.check()
        assert client(videos(2), ["a cat", "a dog"])["hpsv3"].shape == (2,)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_service_job_on_slurm_hands_its_address_and_token_to_the_runs(tiny_hpsv3, tmp_path, slurm, monkeypatch):  # noqa: F811
    """slurm/hpsv3-service.sbatch on the test cluster: it binds beyond loopback with a token file,
    publishes its address; a client configured as the cluster profiles do (the two files) scores."""
    from .helpers import VENV

    shared = tmp_path / "shared"
    env = {**clean_env(), **slurm, "HPSV3_DEVICE": "cpu", "HPSV3_PORT": str(free_port()), "HPSV3_VENV": str(VENV)}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("HPSV3_TOKEN", None)
    submit = ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={tmp_path}/svc-%j.log"]
    submit += [str(ROOT / "slurm" / "hpsv3-service.sbatch"), str(tiny_hpsv3 / "HPSv3.safetensors")]
    submit += [str(tiny_hpsv3 / "base"), str(shared), "--dtype", "fp32"]
    job = subprocess.run(submit, capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout.strip()
    try:
        deadline = time.time() + 600
        while not (shared / "url").exists():
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=env)
            logs = "".join(p.read_text() for p in tmp_path.glob("svc-*.log"))
            assert state.stdout.strip() in ("PENDING", "RUNNING", "CONFIGURING"), logs[-3000:]
            assert time.time() < deadline, logs[-3000:]
            time.sleep(1)
        url = (shared / "url").read_text().strip()
        assert not url.startswith("http://127.0.0.1") and (shared / "token").stat().st_mode & 0o077 == 0
        assert request(url, body=body())[0] == 401  # reachable beyond loopback, and guarded
        monkeypatch.delenv("HPSV3_TOKEN", raising=False)
        monkeypatch.setenv("HPSV3_URL_FILE", str(shared / "url"))  # what the profiles' setup exports
        monkeypatch.setenv("HPSV3_TOKEN_FILE", str(shared / "token"))
        client = HPSv3Reward(frames=2, batch_size=2)
        client.check()
        assert client(videos(2), ["a cat", "a dog"])["hpsv3"].shape == (2,)
    finally:
        subprocess.run(["scancel", job], env=env)
    deadline = time.time() + 60
    while (shared / "url").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not (shared / "url").exists()  # a stopped service withdraws its address
