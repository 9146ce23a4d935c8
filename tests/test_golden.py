"""Golden metrics: two iterations of every registered algorithm reproduce the stored rows.

The records live in tests/golden/<variant>.json; `python -m tests.golden --update`
regenerates them (after an intended change of the toy base, the trainer or the config).
Values are compared with rel. tolerance golden.RTOL (abs. golden.ATOL), which a change of
the number of threads stays well inside.
"""

import json
import math

import pytest

from tests import golden

from .helpers import run_module

VARIANTS = golden.variants()


def stored(name: str) -> dict:
    path = golden.golden_path(name)
    if not path.exists():
        pytest.fail(f"no golden file {path.name} for variant {name!r}: run `{golden.UPDATE_COMMAND}`")
    return json.loads(path.read_text())


def test_golden_files_cover_every_registered_algorithm():
    from grpo_zoo.core import algorithm

    assert set(algorithm.names(plugins=False)) <= set(VARIANTS)
    files = {p.stem for p in golden.GOLDEN_DIR.glob("*.json")}
    assert files == set(VARIANTS), (
        f"golden files {sorted(files)} != variants {sorted(VARIANTS)}: run `{golden.UPDATE_COMMAND}`"
    )


def check_recorded_inputs() -> None:
    """Fail with the command to run when the golden files were made from another base or config."""
    hashes = golden.checkpoint_hashes()
    for name in VARIANTS:
        rec = stored(name)
        if rec["checkpoint_sha256"] != hashes:
            pytest.fail(
                f"the toy base checkpoint changed since tests/golden/{name}.json was recorded "
                f"(sha256 {hashes} != {rec['checkpoint_sha256']}): regenerate with `{golden.UPDATE_COMMAND}`"
            )
        if rec["config"] != golden.CONFIG or rec["algorithm"] != VARIANTS[name]:
            pytest.fail(f"the golden config changed since {name}.json was recorded: run `{golden.UPDATE_COMMAND}`")


def test_golden_files_match_the_shipped_base_and_config():
    check_recorded_inputs()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    check_recorded_inputs()  # before any compute
    out = tmp_path_factory.mktemp("golden")
    res = run_module("tests.golden", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return {name: json.loads((out / f"{name}.json").read_text()) for name in VARIANTS}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_iterations_reproduce_the_golden_metrics(fresh, variant):
    rec = fresh[variant]
    train = [r for r in rec["rows"] if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(any(k.startswith("grad_t/") for k in r) for r in train)
    # every variant trains: finite terms, an on-policy first inner step, counted compute, every
    # LoRA tensor moved, an evaluation at the start and the end (test_trainer.py runs the CLI)
    for r in train:
        assert all(math.isfinite(r[k]) for k in ("loss/policy", "loss/kl", "reward/mean", "stats/grad_norm"))
        assert r["stats/ratio_dev_first_minibatch"] < 1e-5
        assert r["compute/nfe"] > 0 and r["compute/flops"] > 0 and r["stats/grad_norm"] > 0
    moved, trainable = rec["trained_tensors_moved"]
    assert trainable > 0 and moved == trainable, rec["trained_tensors_moved"]
    evals = [r for r in rec["rows"] if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2] and "eval/object_class" in evals[0]
    diffs = golden.compare(stored(variant), rec)
    assert not diffs, (
        f"{variant}: {len(diffs)} metrics differ from tests/golden/{variant}.json "
        f"(if the change is intended: `{golden.UPDATE_COMMAND}`)\n" + "\n".join(diffs[:20])
    )
