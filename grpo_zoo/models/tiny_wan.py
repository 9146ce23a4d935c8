"""Write a tiny random Wan2.1 directory (transformer, VAE, UMT5, tokenizer) with save_pretrained.

It has the architecture and the on-disk layout of the real model, so loading it goes
through the same code a real run takes. Used by the tests and for trying the real path:

    python -m grpo_zoo.models.tiny_wan OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def write_tiny_wan(out: str | Path, seed: int = 0, variant: str = "wan2.1") -> Path:
    """A tiny random directory of `variant`'s layout: wan2.1 (T2V), wan2.2-ti2v (TI2V-5B's VAE with
    2x2 patches and 48 -> 8 latent channels, expand_timesteps) or wan2.2-a14b (two experts,
    boundary_ratio 0.875), each as diffusers' WanPipeline.save_pretrained writes it."""
    if variant != "wan2.1":
        return write_tiny_wan22(out, variant, seed)
    return _write_wan21(out, seed)


def _write_wan21(out: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from grpo_zoo.toy.model import vocabulary

    out = Path(out)
    torch.manual_seed(seed)
    words = vocabulary() + ["</s>"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")
    fast.save_pretrained(out / "tokenizer")
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(words),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    text_encoder.save_pretrained(out / "text_encoder")
    vae = AutoencoderKLWan(
        base_dim=16,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    vae.save_pretrained(out / "vae")
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=32,
    )
    transformer.save_pretrained(out / "transformer")
    return out


def tiny_transformer(channels: int, seed: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=channels,
        out_channels=channels, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32,
    )  # fmt: skip


def write_tiny_wan22(out: str | Path, variant: str, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    out = Path(out)
    base = _write_wan21(out / "_parts", seed)  # the tokenizer and UMT5 of the Wan2.1 tiny
    tokenizer = AutoTokenizer.from_pretrained(base / "tokenizer")
    text_encoder = UMT5EncoderModel.from_pretrained(base / "text_encoder")
    torch.manual_seed(seed)
    if variant == "wan2.2-ti2v":
        z = 8
        vae = AutoencoderKLWan(
            base_dim=16, decoder_base_dim=16, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
            patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
            latents_mean=[0.0] * z, latents_std=[1.0] * z,
        )  # fmt: skip
        parts = {"transformer": tiny_transformer(z, seed + 1), "expand_timesteps": True}
    elif variant == "wan2.2-a14b":
        vae = AutoencoderKLWan.from_pretrained(base / "vae")
        parts = {
            "transformer": tiny_transformer(4, seed + 1),
            "transformer_2": tiny_transformer(4, seed + 2),
            "boundary_ratio": 0.875,
        }
    else:
        raise ValueError(f"no tiny {variant!r} (wan2.1, wan2.2-ti2v, wan2.2-a14b)")
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), **parts,
    )  # fmt: skip
    pipe.save_pretrained(out)
    import shutil

    shutil.rmtree(out / "_parts")
    return out


if __name__ == "__main__":
    print(
        write_tiny_wan(
            sys.argv[1] if len(sys.argv) > 1 else "tiny-wan", variant=sys.argv[2] if len(sys.argv) > 2 else "wan2.1"
        )
    )
