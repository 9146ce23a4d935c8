"""The shared trainer and engine on the toy world (and a tiny random Wan)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from grpo_zoo.runs import RunDir
from tests import golden

from .helpers import ROOT, SMALL, merged

# Every registered algorithm and its switches train for two iterations in test_golden.py (one
# process, LoRA); here the train CLI runs full fine-tuning on the paper's methods ...
VARIANTS = {name: golden.algorithm_args(fields) for name, fields in golden.variants().items()}
VARIANTS = {name: VARIANTS[name] for name in ("flow_grpo", "flash_grpo")}
# ... and options of the shared engine, each on a registered algorithm
VARIANTS.update(
    {
        "flow_grpo_fast1": ["algorithm.name=flow_grpo_fast", "algorithm.window=1"],
        "flash_shared_noise": ["algorithm.name=flash_grpo", "algorithm.initial_noise=shared", "optim.beta=0.01"],
        "flash_lora": ["algorithm.name=flash_grpo", "model.lora_rank=4", "optim.beta=0.01"],
        "flash_bf16_ema": ["algorithm.name=flash_grpo", "engine.precision=bf16", "optim.ema_decay=0.9"],
    }
)


def module_weights(run_dir, step):
    states = torch.load(
        run_dir / "checkpoints" / f"step-{step}" / "engine" / "mp_rank_00_model_states.pt", weights_only=False
    )
    return states["module"]


@pytest.fixture(scope="module")
def base_weights():
    from grpo_zoo.toy.model import load_checkpoint

    return load_checkpoint("toy-base")[0].state_dict()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_algorithm_trains_on_the_toy_world(train, tmp_path, base_weights, variant):
    out = train("experiments/toy/base.yaml", f"run_dir={tmp_path}", *SMALL, *VARIANTS[variant])
    assert out.returncode == 0, out.stderr[-3000:]
    run = RunDir(tmp_path)
    assert run.is_complete()
    rows = [r for r in run.rows() if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert all(
            torch.isfinite(torch.tensor(r[k])) for k in ("loss/policy", "loss/kl", "reward/mean", "stats/grad_norm")
        )
        # the first inner step is on-policy (bf16 forwards differ slightly with batch composition)
        assert r["stats/ratio_dev_first_minibatch"] < (2e-2 if "bf16" in variant else 1e-5)
        assert r["compute/nfe"] > 0 and r["compute/flops"] > 0
    after = module_weights(tmp_path, 2)
    if "model.lora_rank=4" in VARIANTS[variant]:  # LoRA: B starts at zero, so it trained if it moved
        lora_b = [v for k, v in after.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    else:
        # compare in the checkpoint's dtype (bf16 runs store bf16 weights)
        changed = [k for k in base_weights if not torch.equal(base_weights[k].to(after[k].dtype), after[k])]
        assert len(changed) > len(base_weights) // 2
    evals = [r for r in run.rows() if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2] and "eval/object_class" in evals[0]


def test_nfe_counts_follow_the_plan(train, tmp_path):
    """flow_grpo trains 5 of 6 steps per trajectory, flash 1: the logged counters say so."""
    counts = {}
    for name, extra in (("flow", VARIANTS["flow_grpo"]), ("flash", VARIANTS["flash_grpo"])):
        args = (*SMALL, *extra, "budget.steps=1", "optim.beta=0")  # no KL: its reference forwards aside
        out = train("experiments/toy/base.yaml", f"run_dir={tmp_path / name}", *args)
        assert out.returncode == 0, out.stderr[-2000:]
        counts[name] = [r for r in RunDir(tmp_path / name).rows() if r["kind"] == "train"][-1]
    b, t = 2 * 4, 6
    n = 5  # Flow-GRPO's reference trains floor(T * 0.99) steps: 5 of 6
    assert counts["flash"]["stats/transitions"] == b and counts["flow"]["stats/transitions"] == b * n
    # rollout NFE (B x T) + one training forward per trained transition
    assert counts["flash"]["compute/nfe"] == b * t + b
    assert counts["flow"]["compute/nfe"] == b * t + n * b
    assert counts["flow"]["compute/backward"] == n * counts["flash"]["compute/backward"]


def test_bad_configs_exit_2_with_one_line_before_compute(train, tmp_path, capsys):
    from grpo_zoo.train import main as train_main

    cases = [
        (["algorithm.name=flashgrpo"], "algorithm.name"),
        (["algorithm.name=flash_grpo", "algorithm.k_range=[0,30]"], "algorithm.k_range"),
        (["algorithm.name=flow_grpo_fast", "algorithm.window=11"], "algorithm.window"),
        (["data.group_size=1"], "group_size"),
        (["model.path=/no/such/model"], "model.path"),
        (["data.prompts=/no/such/prompts.txt"], "data.prompts"),
        (["optim.lrr=1"], "optim.lrr"),
        (["reward.name=hps"], "reward.name"),
        (["engine.zero_stage=4"], "zero_stage"),
    ]
    for args, needle in cases:  # the CLI's entry function, in this process
        with pytest.raises(SystemExit) as exited:
            train_main(["experiments/toy/base.yaml", f"run_dir={tmp_path / 'bad'}", *args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exited.value.code == 2 and len(lines) == 1 and needle in lines[0], (args, lines)
        assert not (tmp_path / "bad").exists()
    out = train("experiments/toy/base.yaml", f"run_dir={tmp_path / 'bad'}", env={"WORLD_SIZE": "3"})
    assert out.returncode == 2 and "prompts_per_step" in out.stderr
    out = train("experiments/toy/missing.yaml")
    assert out.returncode == 2 and "no such config file" in out.stderr


def test_help_lists_every_field_with_its_doc(train):
    out = train("--help")
    assert out.returncode == 0
    for needle in (
        "optim.clip_range",
        "PPO clip epsilon",
        "algorithm.grouping",
        "algorithm.window",
        "budget.device_hours",
    ):
        assert needle in out.stdout


def test_wan_backend_trains_a_step_on_a_tiny_random_wan(train, tmp_path):
    from grpo_zoo.models.tiny_wan import write_tiny_wan

    model = write_tiny_wan(tmp_path / "tiny-wan")
    out = train(
        "experiments/toy/base.yaml",
        f"run_dir={tmp_path / 'run'}",
        *SMALL,
        "budget.steps=1",
        "model.backend=wan",
        f"model.path={model}",
        "model.height=16",
        "model.width=16",
        "model.frames=9",
        "model.max_tokens=8",
        "model.lora_rank=4",
        "optim.beta=0.01",
        "sampling.guidance=2.0",
        "checkpoint_every=1",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    weights = module_weights(tmp_path / "run", 1)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: it trained
    row = [r for r in RunDir(tmp_path / "run").rows() if r["kind"] == "train"][0]
    # rollout (B x T) + training forward + reference forward (KL), each doubled by CFG
    assert row["compute/nfe"] == 2 * (8 * 6 + 8 + 8)


@pytest.mark.slow
def test_two_process_zero2_run_ends_with_identical_weights(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            "-m",
            "grpo_zoo.train",
            "experiments/toy/base.yaml",
            f"run_dir={tmp_path}",
            *SMALL,
            "engine.zero_stage=2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "COMPLETED").read_text())
    assert summary["ranks_in_sync"] and len(summary["param_checksums"]) == 2
    assert json.loads((tmp_path / "meta.json").read_text())["world_size"] == 2


NONDETERMINISTIC = ("compute/device_seconds", "compute/device_hours")


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in NONDETERMINISTIC} for r in rows]


@pytest.mark.slow
def test_killed_and_resumed_run_writes_the_same_rows(tmp_path):
    args = ["experiments/toy/base.yaml", *merged(*SMALL, "budget.steps=4", "checkpoint_every=2", "data.eval_every=2")]
    ref = subprocess.run(
        [sys.executable, "-m", "grpo_zoo.train", *args, f"run_dir={tmp_path / 'ref'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grpo_zoo.train", *args, f"run_dir={run}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    deadline = time.time() + 600
    while not (run / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "COMPLETED").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "grpo_zoo.train", *args, f"run_dir={run}"], capture_output=True, text=True, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(RunDir(run).rows()) == comparable(RunDir(tmp_path / "ref").rows())
    assert len(json.loads((run / "meta.json").read_text()).get("resumes", [])) == 1


@pytest.mark.slow
def test_zero3_with_lora_and_ema_trains_evaluates_and_extends(train, tmp_path):
    """The 14B recipe's engine on the toy: the frozen base sharded (ZeRO-3), LoRA, an EMA kept
    through DeepSpeed's GatheredParameters and evaluated; a raised budget resumes from the
    LoRA-only checkpoint and goes on."""
    args = ["experiments/toy/base.yaml", f"run_dir={tmp_path}", *SMALL, "algorithm.name=flash_grpo"]
    args += [
        "model.lora_rank=4",
        "engine.zero_stage=3",
        "optim.ema_decay=0.5",
        "optim.ema_every=1",
        "checkpoint_every=1",
    ]
    out = train(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = RunDir(tmp_path).rows()
    assert [(r["kind"], r["step"]) for r in rows] == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]
    assert all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in rows if r["kind"] == "train")
    assert rows[-1]["eval/reward"] != rows[0]["eval/reward"]  # the EMA of the trained LoRA was evaluated
    out = train(*args, "budget.steps=3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from checkpoint step-2" in out.stderr
    assert [r["step"] for r in RunDir(tmp_path).rows() if r["kind"] == "train"] == [1, 2, 3]
