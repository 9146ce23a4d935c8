"""CLIP-family scorers behind the reward service (`server.py --scorer pickscore|clip_score`).

Each scores (image, prompt) pairs with a transformers CLIPModel read from a local directory
(`--model`; its tokenizer and image processor from `--processor`, default the same directory):
- pickscore: logit_scale.exp() x cos(text, image) / 26, Flow-GRPO's PickScore scorer
  (yifan123/flow_grpo flow_grpo/pickscore_scorer.py:38-49 at ac4c86e: PickScore_v1 with the
  CLIP-ViT-H-14 processor; / 26 brings it to about [0, 1]);
- clip_score: max(100 x cos(text, image), 0), the CLIPScore of Hessel et al. (2021) as
  torchmetrics computes it.
Prompts are truncated to the text model's 77 tokens, as both do. `reward(images, prompts)`
returns [N, 1], the interface server.py batches frames into.
"""

from __future__ import annotations

SCORERS = ("pickscore", "clip_score")


class CLIPScorer:
    def __init__(
        self, kind: str, model_dir: str, processor_dir: str | None = None, device: str = "cpu", dtype: str = "fp32"
    ):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        if kind not in SCORERS:
            raise ValueError(f"--scorer: {kind!r} is not one of {', '.join(SCORERS)}")
        self.kind, self.device = kind, device
        self.dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        self.model = CLIPModel.from_pretrained(model_dir, torch_dtype=self.dtype).eval().to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(processor_dir or model_dir)
        self.images = AutoImageProcessor.from_pretrained(processor_dir or model_dir)
        self.max_length = min(77, int(self.model.config.text_config.max_position_embeddings))

    def reward(self, images, prompts: list[str]):
        import torch

        pixels = self.images(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        text = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            img = self.model.get_image_features(pixel_values=pixels).float()
            txt = self.model.get_text_features(
                input_ids=text["input_ids"], attention_mask=text["attention_mask"]
            ).float()
            cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
            if self.kind == "pickscore":
                score = self.model.logit_scale.exp().float() * cos / 26
            else:
                score = (100 * cos).clamp_min(0)
        return score[:, None]


def write_tiny_clip(out: str, seed: int = 0) -> str:
    """A tiny random CLIPModel with a word-level tokenizer and a 32-pixel image processor, saved
    with save_pretrained: the architecture PickScore and CLIP score load, for tests and trials."""
    from pathlib import Path

    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    words = ["[PAD]", "[UNK]", "a", "red", "blue", "green", "circle", "square", "triangle", "moving", "moves",
             "left", "right", "up", "down", "cat", "dog", "video"]  # fmt: skip
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    config = CLIPConfig(
        text_config={"vocab_size": len(words), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    out_dir = Path(out)
    CLIPModel(config).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return str(out_dir)
