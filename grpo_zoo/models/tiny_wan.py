"""Write a tiny random Wan2.1 directory (transformer, VAE, UMT5, tokenizer) with save_pretrained.

It has the architecture and the on-disk layout of the real model, so loading it goes
through the same code a real run takes. Used by the tests and for trying the real path:

    python -m grpo_zoo.models.tiny_wan OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def write_tiny_wan(out: str | Path, seed: int = 0) -> Path:
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


if __name__ == "__main__":
    print(write_tiny_wan(sys.argv[1] if len(sys.argv) > 1 else "tiny-wan"))
