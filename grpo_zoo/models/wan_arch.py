"""Wan2.1 and Wan2.2 architectures by name, for cost estimates without the weights.

The transformer configs are the published hyperparameters of Wan2.1-T2V-1.3B and -14B (the
diffusers WanTransformer3DModel fields); the VAE compresses time 4x and space 8x into 16
channels, and UMT5-XXL's embeddings are 4096 wide. A local model directory, when present,
always wins over these (its transformer/config.json and vae/config.json are read instead).
"""

from __future__ import annotations

_COMMON = {
    "patch_size": [1, 2, 2],
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

ARCHS = {
    "wan2.1-t2v-1.3b": {
        "transformer": {**_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
        "vae": {"z_dim": 16, "temperal_downsample": [False, True, True]},
    },
    "wan2.1-t2v-14b": {
        "transformer": {**_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
        "vae": {"z_dim": 16, "temperal_downsample": [False, True, True]},
    },
    # Wan2.2 (Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py:19-28 and wan_t2v_A14B.py:19-29): TI2V-5B
    # is 3072 wide in 24 heads, 30 layers, on its own VAE (48 channels, 4 x 16 x 16: it patchifies
    # 2x2 before the 8x downsampling); T2V-A14B is two transformers of Wan2.1-14B's shape (the
    # high- and low-noise experts) on Wan2.1's VAE.
    "wan2.2-ti2v-5b": {
        "transformer": {**_COMMON, "num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30, "in_channels": 48, "out_channels": 48},
        "vae": {
            "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
            "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16, "temperal_downsample": [False, True, True],
            "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48,
        },
    },
    "wan2.2-t2v-a14b": {
        "transformer": {**_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
        "vae": {"z_dim": 16, "temperal_downsample": [False, True, True]},
    },
}  # fmt: skip


def vae_scales(vconf: dict) -> tuple[int, int]:
    """(time, space) compression of a Wan VAE from its config: 2^(temporal downsamplings), and
    2^(downsamplings) times its patch size (Wan2.2's VAE patchifies 2x2 first: 16x in space)."""
    down = vconf.get("temperal_downsample", [False, True, True])
    return 2 ** sum(down), 2 ** len(down) * int(vconf.get("patch_size") or 1)
