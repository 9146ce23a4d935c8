"""Experiment tracking: what TensorBoard and W&B (offline, no network) received, read back
with their own readers (TensorBoard's EventAccumulator; W&B's protobuf records of the run's
.wandb file), against metrics.jsonl and config.yaml."""

import glob
import json
import struct
from pathlib import Path

import pytest
import yaml

from grpo_zoo.runs import RunDir

from .helpers import SMALL

# no network: offline W&B must not need one (an unroutable server proves it)
OFFLINE = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}


def tensorboard_scalars(run_dir: Path, config_text: bool = True) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """The scalars of the event files in RUN/tensorboard (or, given that folder, in it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir if run_dir.name == "at_flops" else run_dir / "tensorboard"
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    series = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode() if config_text else ""
    return series, text


def wandb_records(run_dir: Path) -> list:
    """Every record of the offline run file: W&B's own protobuf messages, in the file's
    block framing (a 7-byte ':W&B' header, then 32 KiB blocks of crc/length/type chunks)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, chunk, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history_and_config(run_dir: Path) -> tuple[dict[int, dict], dict]:
    history, config = {}, {}
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[row.pop("_step")] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind in ("run", "config"):
            updates = r.run.config.update if kind == "run" else r.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates if u.key != "_wandb"})
    return history, config


def expected_series(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for row in rows:
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                out.setdefault(k, []).append((row["step"], float(v)))
    return out


def check_mirrors(run_dir: Path) -> None:
    rows, config = RunDir(run_dir).rows(), RunDir(run_dir).config()
    assert rows
    series, text = tensorboard_scalars(run_dir)
    want = expected_series(rows)
    assert set(series) == set(want)  # the same metric names
    for tag, points in want.items():
        assert [s for s, _ in series[tag]] == [s for s, _ in points], tag
        assert [v for _, v in series[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag
    assert yaml.safe_load(text.strip().strip("`").removeprefix("yaml\n")) == config
    history, wb_config = wandb_history_and_config(run_dir)
    per_step: dict[int, dict] = {}
    for row in rows:  # several rows at one step (train, then eval) are one W&B history row
        per_step.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k in want})
    assert sorted(history) == sorted(per_step)
    for step, values in per_step.items():
        assert {k: v for k, v in history[step].items() if k in want} == pytest.approx(values, rel=1e-12), step
    assert wb_config == config
    # the same metrics against the FLOPs spent (TensorBoard's at_flops writer): compare at equal compute
    at_flops, _ = tensorboard_scalars(run_dir / "tensorboard" / "at_flops", config_text=False)
    want_flops: dict[str, list] = {}
    for row in rows:
        if "compute/flops" in row:
            for k, v in row.items():
                if k in want:
                    want_flops.setdefault(k, []).append((int(row["compute/flops"]), float(v)))
    assert set(at_flops) == set(want_flops)
    for tag, points in want_flops.items():
        assert [s for s, _ in at_flops[tag]] == [s for s, _ in points], tag
        assert [v for _, v in at_flops[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag


def test_rows_reach_tensorboard_and_wandb_with_names_and_config(tmp_path, monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    config = {"run_dir": str(tmp_path), "seed": 3, "optim": {"lr": 1e-4}}
    config["logging"] = {"backends": ["jsonl", "tensorboard", "wandb"], "project": "p", "wandb_mode": "offline"}
    run = RunDir(tmp_path)
    run.start(config, world_size=1, device="cpu", resume=False)
    run.log({"step": 0, "kind": "eval", "eval/reward": 0.25, "compute/flops": 0.0})
    for step in (1, 2):
        run.log({"step": step, "kind": "train", "reward/mean": 0.1 * step, "loss/policy": -0.5, "compute/flops": 1e12})
    run.log({"step": 2, "kind": "eval", "eval/reward": 0.5, "compute/flops": 2e12})
    from PIL import Image

    grid = tmp_path / "eval" / "step-000002.png"
    grid.parent.mkdir()
    Image.new("RGB", (24, 8), (200, 30, 30)).save(grid)
    run.tracker.image(2, "eval/videos", grid)  # the evaluation's grid, as evaluation.py logs it
    run.complete({"step": 2})
    check_mirrors(tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    (image,) = acc.Images("eval/videos")
    assert (image.step, image.width, image.height) == (2, 24, 8)
    history, _ = wandb_history_and_config(tmp_path)
    assert history[2]["eval/videos/_type"] == "image-file" and history[2]["eval/videos/width"] == 24


def test_unknown_or_missing_backend_is_one_line_exit_2(train, tmp_path):
    out = train("experiments/toy/base.yaml", f"run_dir={tmp_path / 'r'}", "logging.backends=[jsonl,mlflow]")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "logging.backends" in out.stderr and "mlflow" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_training_run_logs_to_every_backend(train, tmp_path):
    out = train(
        "experiments/toy/base.yaml",
        f"run_dir={tmp_path}",
        *SMALL,
        "data.eval_every=1",
        "logging.backends=[jsonl,tensorboard,wandb]",
        env=OFFLINE,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    check_mirrors(tmp_path)
    names = {k for r in RunDir(tmp_path).rows() for k in r}
    assert {"reward/mean", "eval/reward", "loss/policy", "stats/clipfrac", "compute/flops"} <= names


def test_a_resumed_run_rewrites_tensorboard_past_its_checkpoint(tmp_path):
    """Killed after step 4 with a checkpoint at step 2: TensorBoard ends up with each step once."""
    config = {"run_dir": str(tmp_path), "logging": {"backends": ["tensorboard"]}}
    first = RunDir(tmp_path)
    first.start(config, world_size=1, device="cpu", resume=False)
    for step in range(5):
        first.log({"step": step, "kind": "train", "reward/mean": float(step)})
    first.tracker.close()  # the process dies
    resumed = RunDir(tmp_path)
    resumed.resume_metrics(3, after_step=2, checkpoint="step-2")  # what the trainer does on resume
    resumed.start(config, world_size=1, device="cpu", resume=True)
    for step in (3, 4, 5):
        resumed.log({"step": step, "kind": "train", "reward/mean": 10.0 + step})
    resumed.complete({"step": 5})
    series, _ = tensorboard_scalars(tmp_path)
    assert series["reward/mean"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]
    assert expected_series(RunDir(tmp_path).rows()) == series
