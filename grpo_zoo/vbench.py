"""VBench interop: `python -m grpo_zoo.vbench export|ingest ...`.

VBench (github.com/Vchitect/VBench) scores videos with its own models, in its own
environment, usually on a GPU. grpo-zoo meets it at the files:

- every run writes its final evaluation's videos to RUN/eval/videos/ as `<prompt>-<i>.mp4`, i
  counting the samples of that prompt, the prompt spelled without spaces (`a_red_circle_moving_left-0.mp4`:
  a space is `_`, any other character but letters, digits and `.-~` percent-encoded, so the name
  reads back to the prompt exactly; a prompt longer than that allows keeps its first part and a
  hash of the whole);
- `export RUNS_DIR --out DIR` gathers them into DIR/<run>/ (links, or copies across
  filesystems) under the names VBench reads the prompt from (`a red circle moving left-0.mp4`),
  with a prompt map, and prints the VBench command for each folder;
- `ingest RESULTS_DIR --runs RUNS_DIR` reads VBench's `*_eval_results.json` files
  (`{dimension: [score, [per-video results]]}`) from RESULTS_DIR/<run>/ and writes each
  run's RUN/vbench.json, which the report's Table 1 shows beside GPU-hours.

Aesthetic quality, imaging quality and subject consistency work on any prompts
(`--mode=custom_input`); object class needs VBench's own object prompts (standard mode).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from grpo_zoo.errors import ArgParser, ConfigError, cli

TABLE1_DIMENSIONS = ("aesthetic_quality", "imaging_quality", "subject_consistency", "object_class")
VBENCH_FILE = "vbench.json"


def video_name(prompt: str, index: int) -> str:
    """VBench's file name for the index-th sample of a prompt (no path separators)."""
    safe = re.sub(r"[/\\\0]", " ", prompt).strip()[:200]
    return f"{safe}-{index}.mp4"


def file_name(prompt: str, index: int) -> str:
    """The run's own file name for the index-th sample of a prompt: no spaces, nothing a shell
    or a file system reads specially, and `prompt_of` gives the prompt back."""
    import hashlib
    from urllib.parse import quote

    stem = quote(prompt, safe="").replace("_", "%5F").replace("%20", "_")
    if len(stem) > 200:  # cut outside an escape, and keep two long prompts apart by a hash of the whole
        cut = stem[:190]
        cut = cut[: cut.rfind("%")] if "%" in cut[-2:] else cut
        stem = f"{cut}~{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"
    return f"{stem}-{index}.mp4"


def prompt_of(name: str) -> str:
    """The prompt of a run's video file (`file_name`'s, or VBench's spelling of earlier runs)."""
    from urllib.parse import unquote

    stem = re.sub(r"-\d+\.mp4$", "", name)
    if " " in stem:
        return stem
    stem = re.sub(r"~[0-9a-f]{8}$", "", stem)  # a long prompt's name: its first part
    return unquote(stem.replace("_", "%20"))


def save_eval_videos(frames: np.ndarray, prompts: list[str], offset: int, n_prompts: int, out: Path) -> list[Path]:
    """frames: uint8 [B, F, H, W, 3] of the samples offset..offset+B-1 (the eval prompts cycle)."""
    from grpo_zoo.runs.media import write_mp4

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, (video, prompt) in enumerate(zip(frames, prompts)):
        index = (offset + j) // n_prompts
        paths.append(write_mp4(video, out / file_name(prompt, index)))
    return paths


def run_dirs_with_videos(root: Path) -> list[Path]:
    return sorted(p.parent.parent for p in root.rglob("eval/videos") if (p.parent.parent / "config.yaml").exists())


def export(root: Path, out: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for run in run_dirs_with_videos(root):
        dest = out / run.name
        dest.mkdir(parents=True, exist_ok=True)
        mapping = {}
        for video in sorted((run / "eval" / "videos").glob("*.mp4")):
            index = re.search(r"-(\d+)\.mp4$", video.name)
            prompt = prompt_of(video.name)
            target = dest / (video_name(prompt, int(index.group(1))) if index else video.name)
            if not target.exists():
                try:
                    os.link(video, target)
                except OSError:
                    shutil.copy2(video, target)
            mapping.setdefault(target.name, prompt)  # two prompts VBench spells alike: the first keeps the name
        (dest / "prompts.json").write_text(json.dumps(mapping, indent=1))
        pairs.append((run, dest))
    return pairs


def read_results(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    out = {}
    for dim, value in data.items():
        score = value[0] if isinstance(value, list) and value else value
        if isinstance(score, int | float):
            out[dim] = float(score)
    return out


def ingest(results: Path, root: Path) -> dict[str, dict[str, float]]:
    runs = {r.name: r for r in run_dirs_with_videos(root)}
    found: dict[str, dict[str, float]] = {}
    for path in sorted(results.rglob("*_eval_results.json")):
        name = next((part for part in reversed(path.relative_to(results).parts[:-1]) if part in runs), None)
        if name is None:
            name = next((n for n in runs if path.name.startswith(n)), None)
        if name is None:
            continue
        found.setdefault(name, {}).update(read_results(path))
    for name, scores in found.items():
        from grpo_zoo.runs import atomic_write

        atomic_write(runs[name] / VBENCH_FILE, json.dumps(scores, indent=1))
    return found


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.vbench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="gather the runs' eval videos for VBench")
    e.add_argument("runs", help="runs directory (any depth)")
    e.add_argument("--out", required=True, help="folder for VBench's input")
    i = sub.add_parser("ingest", help="read VBench's results into the runs")
    i.add_argument("results", help="folder holding <run>/..._eval_results.json")
    i.add_argument("--runs", required=True, help="runs directory the results belong to")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "export":
        root = Path(args.runs)
        if not root.is_dir():
            raise ConfigError(f"runs: no directory {args.runs!r}")
        pairs = export(root, Path(args.out))
        if not pairs:
            raise ConfigError(f"runs: no run under {root} has eval/videos (train with save_eval_videos: true)")
        dims = " ".join(TABLE1_DIMENSIONS[:3])
        for run, dest in pairs:
            n = len(list(dest.glob("*.mp4")))
            print(f"{run.name}: {n} videos -> {dest}")
            print(
                f"  python evaluate.py --dimension {dims} --videos_path {dest} "
                f"--output_path {Path(args.out) / 'results' / run.name} --mode=custom_input"
            )
        return 0
    results, root = Path(args.results), Path(args.runs)
    if not results.is_dir() or not root.is_dir():
        raise ConfigError("results and --runs: both must be directories")
    found = ingest(results, root)
    if not found:
        raise ConfigError(f"results: no *_eval_results.json under {results} matches a run under {root}")
    for name, scores in found.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
