"""Prompt sets: `toy:train` / `toy:test` (the toy world), or a text file, one prompt per line.

In a file, blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

from grpo_zoo.errors import ConfigError, given_path


def load_prompts(spec: str, field: str = "data.prompts") -> list[str]:
    if spec.startswith("toy:"):
        from grpo_zoo.toy import world

        split = spec.split(":", 1)[1]
        if split not in world.SPLITS:
            raise ConfigError(f"{field}: unknown toy split {split!r} (toy:train or toy:test)")
        return [p.text for p in world.prompts(split)]
    path = given_path(spec, field, "prompt file")
    if path.exists() and not path.is_file():  # a folder, a FIFO: never opened
        raise ConfigError(f"{field}: {spec!r} is not a regular file (give a text file, one prompt per line)")
    if not path.is_file():
        raise ConfigError(f"{field}: no prompt file {spec!r}")
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except UnicodeDecodeError:
        raise ConfigError(f"{field}: {spec!r} is not a text file (one prompt per line, UTF-8)") from None
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"{field}: {spec!r} holds no prompt")
    return prompts
