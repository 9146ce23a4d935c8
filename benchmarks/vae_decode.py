"""The VAE decode in bf16 against float32: `python -m benchmarks.vae_decode [--n 16] [--seeds 8]`.

On the TINY random Wan VAE (grpo_zoo/models/tiny_wan.py: base_dim 16, z_dim 4; not the real
127M-parameter one, whose error should be measured on a GPU with the real weights), n latents
per seed (9 frames, 16x16: the toy reward's size) are decoded in float32 one at a time and in bf16 two at a time (the
defaults of model.vae_dtype / model.vae_batch). Printed: the mean and largest absolute pixel
error (pixels in [-1, 1]), the error of batching alone (float32, two at a time), and the toy
reward (toy_hps) of the two decodes: the mean absolute change of a video's reward and of the
batch's mean reward, against the seed-to-seed noise of the batch's mean reward (its std over
--seeds latent seeds). A measurement of numerics, not a timing.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch

from grpo_zoo.errors import AT_LEAST_ONE, ArgParser, cli, number


@torch.no_grad()
def measure(n: int = 16, seeds: int = 8) -> dict:
    from grpo_zoo import rewards
    from grpo_zoo.config.run import ModelConfig
    from grpo_zoo.models.tiny_wan import write_tiny_wan
    from grpo_zoo.models.wan import WanPolicy
    from grpo_zoo.training.prompts import load_prompts

    path = write_tiny_wan(tempfile.mkdtemp() + "/tiny-wan")
    shape = {"backend": "wan", "path": str(path), "height": 16, "width": 16, "frames": 9, "max_tokens": 8}
    fp32 = WanPolicy.load(ModelConfig(**shape, vae_dtype="fp32", vae_batch=1))
    fp32_batched = WanPolicy.load(ModelConfig(**shape, vae_dtype="fp32", vae_batch=2))
    bf16 = WanPolicy.load(ModelConfig(**shape, vae_dtype="bf16", vae_batch=2))
    held_out = load_prompts("toy:test", "prompts")
    prompts = [held_out[i % len(held_out)] for i in range(n)]
    reward = rewards.get("toy_hps")
    err, err_max, batch_err, dr, dmean, means = [], 0.0, 0.0, [], [], []
    for seed in range(seeds):
        z = torch.randn(n, *fp32.latent_shape, generator=torch.Generator().manual_seed(seed))
        ref, low = fp32.decode(z), bf16.decode(z)
        batch_err = max(batch_err, float((fp32_batched.decode(z) - ref).abs().max()))
        err.append(float((low - ref).abs().mean()))
        err_max = max(err_max, float((low - ref).abs().max()))
        r_ref, r_low = reward(ref, prompts)["toy_hps"].double(), reward(low, prompts)["toy_hps"].double()
        dr.append(float((r_low - r_ref).abs().mean()))
        dmean.append(float((r_low.mean() - r_ref.mean()).abs()))
        means.append(float(r_ref.mean()))
    return {
        "vae": "tiny random Wan VAE (base_dim 16, z_dim 4), 9 frames 16x16",
        "mean_abs_pixel_error_bf16": sum(err) / len(err),
        "max_abs_pixel_error_bf16": err_max,
        "max_abs_pixel_error_batching_fp32": batch_err,
        "reward_change_per_video": sum(dr) / len(dr),
        "reward_change_of_batch_mean": sum(dmean) / len(dmean),
        "seed_to_seed_std_of_batch_mean": float(torch.tensor(means, dtype=torch.float64).std()),
    }


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m benchmarks.vae_decode", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=number(int, AT_LEAST_ONE), default=16, help="videos per seed")
    p.add_argument("--seeds", type=number(int, AT_LEAST_ONE), default=8, help="latent seeds")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.n, args.seeds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
