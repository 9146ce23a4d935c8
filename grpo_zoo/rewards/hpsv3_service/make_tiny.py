"""Write a tiny random HPSv3 of the real architecture, offline, for tests and trials:

    .venv-hpsv3/bin/python grpo_zoo/rewards/hpsv3_service/make_tiny.py OUT

OUT/base/ is a Qwen2-VL directory (config, a WordLevel tokenizer with Qwen2-VL's special
tokens and a chat template, Qwen2-VL's image processor) saved with save_pretrained; the
HPSv3 model is then built from it by hpsv3's own create_model_and_processor (the `<|Reward|>`
token, the ranknet head) and its weights saved as OUT/HPSv3.safetensors, which the server
loads exactly as it loads the released checkpoint. Runs in the hpsv3 environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "with",
    "and",
    "to",
    "is",
    "are",
    "video",
    "image",
    "frame",
    "quality",
    "score",
    "rate",
    "please",
    "this",
    "how",
    "well",
    "prompt",
    "user",
    "assistant",
    "system",
    "you",
    "given",
    "evaluate",
    "text",
    "describe",
    "cat",
    "dog",
    "red",
    "blue",
    "car",
    "person",
    "walking",
    ":",
    ",",
    ".",
    "?",
    "!",
    "'",
    '"',
    "(",
    ")",
    "[",
    "]",
    "-",
    "_",
    "/",
    "\\",
    "<",
    ">",
    "|",
    "*",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


JUDGE_WORDS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "video", "prompt", "good", "bad", "a", "the", "."]
"""A tiny judge's words: the nine digits among few others, so its top log-probs hold digits."""


def write_base(out: Path, seed: int = 0, words: list[str] | None = None) -> Path:
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    torch.manual_seed(seed)
    vocab = {w: i for i, w in enumerate(["[UNK]", *(WORDS if words is None else words)])}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    tok = Qwen2TokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok, chat_template=CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        tie_word_embeddings=False,
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    base = out / "base"
    Qwen2VLForConditionalGeneration(config).save_pretrained(base)
    processor.save_pretrained(base)
    return base


def write_tiny_hpsv3(out: str | Path, seed: int = 0) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from server import import_torchvision, inferencer_config

    import_torchvision()
    import safetensors.torch
    import torch
    from hpsv3.train import create_model_and_processor
    from hpsv3.utils.parser import DataConfig, ModelConfig, PEFTLoraConfig, TrainingConfig, parse_args_with_yaml

    out = Path(out)
    base = write_base(out, seed)
    (_, training_args, model_config, peft_config), _ = parse_args_with_yaml(
        (DataConfig, TrainingConfig, ModelConfig, PEFTLoraConfig), inferencer_config(str(base), "fp32"), is_train=False
    )
    torch.manual_seed(seed + 1)
    model, _, _ = create_model_and_processor(model_config, peft_config, training_args)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(out / "HPSv3.safetensors"))
    return out


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "--judge":  # a tiny Qwen2-VL judge for judge_server.py
        sys.path.insert(0, str(Path(__file__).parent))
        from server import import_torchvision

        import_torchvision()
        print(write_base(Path(sys.argv[1]), words=JUDGE_WORDS))
    else:
        print(write_tiny_hpsv3(sys.argv[1] if len(sys.argv) > 1 else "tiny-hpsv3"))
