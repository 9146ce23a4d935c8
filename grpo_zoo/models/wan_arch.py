"""Wan2.1 architectures by name, for cost estimates without the weights.

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
}
