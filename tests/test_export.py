"""`python -m grpo_zoo.export RUN`: a run's trained weights in diffusers' own format, loaded back by
diffusers onto the run's base transformer with the same outputs as the trained policy."""

import json

import pytest
import torch

from grpo_zoo.export import main as export_main
from grpo_zoo.export import trained_policy

from .helpers import SMALL, merged, run_module


def trained_run(tmp_path, name, *extra):
    run = tmp_path / name
    args = merged(*SMALL, "checkpoint_every=2", "logging.progress_every=1000", f"run_dir={run}", *extra)
    out = run_module("grpo_zoo.train", "experiments/toy/flash_grpo.yaml", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


def outputs(net, policy):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *policy.latent_shape, generator=gen)
    emb = policy.encode(["a red circle moving left", "a blue square moving up"])
    with torch.no_grad():
        return net.eval()(x, torch.tensor([500.0, 250.0]), emb, return_dict=False)[0]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return trained_run(
        tmp_path_factory.mktemp("export"), "lora", "model.lora_rank=4", "optim.ema_decay=0.5", "optim.ema_every=1"
    )


def test_a_lora_run_exports_an_adapter_diffusers_loads_back(lora_run, tmp_path):
    from diffusers import WanTransformer3DModel

    from grpo_zoo.toy.model import resolve

    assert export_main([str(lora_run), "--out", str(tmp_path / "ema")]) == 0
    assert export_main([str(lora_run), "--out", str(tmp_path / "raw"), "--weights", "raw"]) == 0
    record = json.loads((tmp_path / "ema" / "export.json").read_text())
    assert (record["format"], record["weights"], record["checkpoint"]) == ("lora", "ema", "step-2")
    got = {}
    for which in ("ema", "raw"):
        _, policy, _, _ = trained_policy(lora_run, None, which)
        base = WanTransformer3DModel.from_pretrained(resolve("toy-base") / "transformer")
        base.load_lora_adapter(tmp_path / which, prefix="transformer", weight_name="pytorch_lora_weights.safetensors")
        got[which] = outputs(base, policy)
        torch.testing.assert_close(got[which], outputs(policy.net, policy), rtol=0, atol=1e-6)
    assert not torch.allclose(got["ema"], got["raw"])  # the EMA is not the optimizer's weights


def test_a_full_fine_tuning_run_exports_its_transformer(tmp_path):
    from diffusers import WanTransformer3DModel

    run = trained_run(tmp_path, "full")
    assert export_main([str(run)]) == 0
    assert json.loads((run / "export" / "export.json").read_text())["format"] == "transformer"
    _, policy, _, _ = trained_policy(run, None, "auto")
    loaded = WanTransformer3DModel.from_pretrained(run / "export" / "transformer")
    torch.testing.assert_close(outputs(loaded, policy), outputs(policy.net, policy), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--checkpoint", "step-99"], "--checkpoint: no checkpoint 'step-99'"),
        (["--checkpoint", "../../etc"], "--checkpoint: no checkpoint"),
        (["--out", "{run}"], "--out:"),
        (["--out", "/proc/grpo-zoo-export"], "is not writable"),  # unwritable, even for root
        (["--out", ""], "--out: an empty path"),
        (["--weights", "best"], "--weights"),
    ],
)
def test_bad_export_input_is_one_line_and_exit_2(lora_run, capsys, argv, needle):
    argv = [a.replace("{run}", str(lora_run)) for a in argv]
    with pytest.raises(SystemExit) as exited:
        export_main([str(lora_run), *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_a_run_without_ema_or_checkpoint_is_refused(tmp_path, capsys):
    run = trained_run(tmp_path, "plain", "optim.ema_decay=0")
    with pytest.raises(SystemExit) as exited:
        export_main([str(run), "--weights", "ema"])
    assert exited.value.code == 2 and "keeps no EMA" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty).mkdir()
    with pytest.raises(SystemExit) as exited:
        export_main([str(empty)])
    assert exited.value.code == 2
    assert not (run / "export").exists()
