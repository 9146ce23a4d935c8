"""The toy world's model: a tiny diffusers WanTransformer3DModel in pixel space and a
frozen word-level prompt encoder.

Pixel space: the "latent" is the video itself, [B, 3, 8, 16, 16] in [-1, 1]; patches of
1 x 4 x 4 give 128 tokens of width 64 (2 heads of 32). The prompt encoder is a WordLevel tokenizer (`tokenizers`)
over the grammar's words and a fixed random embedding: deterministic ids, no training.

Prediction target. A checkpoint's `meta.json` says what the transformer outputs:
`velocity` (v = noise - x0, as Wan2.1 does in its VAE latent space) or `sample` (the
clean video x0, converted to the velocity v = (x_t - x0_hat) / sigma, so the policy is
a velocity model either way). In pixel space with 4 x 4 patches a small transformer
cannot carry the noise through its width precisely enough to predict v near the clean
end (its videos stay grainy); predicting the clean sample is easy there. This is the
"x-prediction" of Li and He, "Back to Basics: Let Denoising Generative Models Denoise"
(arXiv:2511.13720), for pixel-space transformers with large patches; like them the
pretraining loss is the velocity loss, its weight 1 / sigma^2 capped at SIGMA_FLOOR.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from grpo_zoo.toy import world

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
TEXT_DIM = 32
MAX_TOKENS = 8
PAD, UNK = "[PAD]", "[UNK]"

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=2,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=TEXT_DIM,
    freq_dim=64,
    ffn_dim=128,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)


PREDICTIONS = ("velocity", "sample")
SIGMA_FLOOR = 0.05
"""Below this noise level the pretraining loss of a `sample` model stops growing as 1 / sigma^2."""


def velocity(output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, prediction: str) -> torch.Tensor:
    """The flow velocity from the transformer's `output` for x_t at noise levels sigma [B]."""
    if prediction == "velocity":
        return output
    s = sigma.to(output.dtype).clamp_min(1e-4).view(-1, *([1] * (output.dim() - 1)))
    return (x.to(output.dtype) - output) / s


def prediction_of(name_or_path: str) -> str:
    """What a checkpoint's transformer predicts (`velocity` when its meta.json does not say)."""
    meta = resolve(name_or_path) / "meta.json"
    found = json.loads(meta.read_text()).get("prediction", "velocity") if meta.is_file() else "velocity"
    if found not in PREDICTIONS:
        from grpo_zoo.errors import ConfigError

        raise ConfigError(f"model: {str(meta)!r} says prediction {found!r}; expected one of {', '.join(PREDICTIONS)}")
    return found


def vocabulary() -> list[str]:
    words = ["a", "moving", *world.COLOR_NAMES, *world.SHAPES, *world.DIRECTION_NAMES]
    return [PAD, UNK, *words]


def make_tokenizer() -> Tokenizer:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = Whitespace()
    tok.enable_padding(pad_id=vocab[PAD], pad_token=PAD, length=MAX_TOKENS)
    tok.enable_truncation(MAX_TOKENS)
    return tok


class PromptEncoder(torch.nn.Module):
    """Frozen: token ids -> fixed random embeddings [B, MAX_TOKENS, TEXT_DIM] (padding is zero)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.tokenizer = make_tokenizer()
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(len(vocabulary()), TEXT_DIM, generator=gen)
        weight[0] = 0  # [PAD]
        self.embedding = torch.nn.Embedding.from_pretrained(weight, freeze=True)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        ids = torch.tensor([e.ids for e in self.tokenizer.encode_batch([t.lower() for t in texts])])
        return self.embedding(ids.to(self.embedding.weight.device))


def new_transformer(seed: int = 0, **overrides) -> WanTransformer3DModel:
    """A randomly initialised toy transformer (TRANSFORMER_CONFIG, with `overrides`)."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides})


def save_checkpoint(path: Path, transformer: WanTransformer3DModel, encoder: PromptEncoder, meta: dict) -> None:
    """transformer/ (save_pretrained), text_encoder.safetensors, tokenizer.json, meta.json."""
    path.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(path / "transformer")
    save_file(
        {"embedding": encoder.embedding.weight.detach().cpu().contiguous()}, str(path / "text_encoder.safetensors")
    )
    encoder.tokenizer.save(str(path / "tokenizer.json"))
    (path / "meta.json").write_text(json.dumps(meta, indent=1))


def resolve(name_or_path: str) -> Path:
    """`toy-base` (the shipped checkpoint) or a checkpoint directory."""
    path = CHECKPOINT_DIR / name_or_path if (CHECKPOINT_DIR / name_or_path).is_dir() else Path(name_or_path)
    return path


def load_checkpoint(name_or_path: str = "toy-base") -> tuple[WanTransformer3DModel, PromptEncoder]:
    from grpo_zoo.errors import ConfigError

    path = resolve(name_or_path)
    if not (path / "transformer").is_dir():
        shipped = (
            ", ".join(sorted(p.name for p in CHECKPOINT_DIR.iterdir() if p.is_dir())) if CHECKPOINT_DIR.is_dir() else ""
        )
        raise ConfigError(f"model: no toy checkpoint at {name_or_path!r} (shipped: {shipped or 'none'})")
    transformer = WanTransformer3DModel.from_pretrained(path / "transformer")
    encoder = PromptEncoder()
    encoder.embedding.weight.data.copy_(load_file(str(path / "text_encoder.safetensors"))["embedding"])
    encoder.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    return transformer, encoder
