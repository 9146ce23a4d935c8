"""An OpenAI-compatible chat-completions server over a local Qwen2-VL directory, for trying the
`vlm_judge` reward without a vLLM deployment, and its tests' stand-in judge:

    .venv-hpsv3/bin/python grpo_zoo/rewards/hpsv3_service/judge_server.py --model DIR --name judge --port 8000

It serves `GET /v1/models` and `POST /v1/chat/completions` for what the judge asks: one user
message of `image_url` data URLs (JPEG or PNG, base64) and text, `max_tokens` 1, with
`logprobs` and `top_logprobs`: one forward of the model on the chat template's prompt, its
next-token distribution, the argmax as the answer. With `--api-key-file` a request needs
`Authorization: Bearer KEY` (401 otherwise). Loopback only. Imports nothing from grpo_zoo.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import io
import sys
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from PIL import Image


def make_app(model, processor, name: str, key: str | None = None):
    import torch

    app = FastAPI(title="tiny OpenAI-compatible judge")
    lock = threading.Lock()

    def authorize(request: Request) -> None:
        if key is not None:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {key}".encode()):
                raise HTTPException(401, "wrong or missing API key")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "local"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        authorize(request)
        body = await request.json()
        if body.get("model") != name:
            raise HTTPException(404, f"model {body.get('model')!r} is not served here")
        images, parts = [], []
        for message in body.get("messages", []):
            content = message.get("content")
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    images.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
                    parts.append({"type": "image"})
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": part["text"]})
        text = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)
        inputs = processor(text=[text], images=images or None, return_tensors="pt")
        with lock, torch.no_grad():
            logits = model(**inputs).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        k = int(body.get("top_logprobs") or 0)
        top = logp.topk(max(k, 1))
        tokens = processor.tokenizer.convert_ids_to_tokens(top.indices.tolist())
        best = {"token": tokens[0], "logprob": float(top.values[0])}
        entry = {**best, "top_logprobs": [{"token": t, "logprob": float(v)} for t, v in zip(tokens, top.values)][:k]}
        choice = {"index": 0, "message": {"role": "assistant", "content": tokens[0]}, "finish_reason": "length"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [entry]}
        return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "model": name, "choices": [choice]}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description="OpenAI-compatible judge over a local Qwen2-VL", allow_abbrev=False)
    p.add_argument("--model", required=True, help="local Qwen2-VL directory (model and processor)")
    p.add_argument("--name", default="judge", help="the model id clients ask for")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", default=None)
    args = p.parse_args()
    if not Path(args.model).is_dir():
        p.error(f"--model: {args.model} is not a directory")
    sys.path.insert(0, str(Path(__file__).parent))
    from server import import_torchvision

    import_torchvision()
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    key = Path(args.api_key_file).read_text().strip() if args.api_key_file else None
    uvicorn.run(make_app(model, processor, args.name, key), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
