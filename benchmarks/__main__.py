"""`python -m benchmarks [--quick] [--format json|md] [--only NAME ...]`

Runs the benchmarks in one process and prints their figures: with --format json one JSON
object (the headline ratios at the top level), with --format md the tables of BENCHMARKS.md.
--quick (what CI runs) measures only the headline ratios, in about a minute.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

NAMES = ("iteration_cost", "overhead", "time_to_target")


def parse(argv):
    from grpo_zoo.errors import ArgParser

    p = ArgParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="headline ratios only (CI)")
    p.add_argument("--format", choices=("json", "md"), default="md")
    p.add_argument("--only", nargs="+", choices=NAMES, default=None)
    p.add_argument("--runs-dir", default="runs/benchmarks", help="where time_to_target's runs live")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from grpo_zoo.errors import writable_dir, writable_file

    # checked before measuring: a bad path must not cost minutes of measurements and then lose them
    if "time_to_target" in (args.only or ([] if args.quick else NAMES)):
        writable_dir(args.runs_dir, "--runs-dir")
    if args.out:
        writable_file(args.out, "--out")
    return args


def main(argv=None) -> int:
    from grpo_zoo.errors import ConfigError

    try:
        args = parse(argv)
    except ConfigError as err:  # one line and exit status 2, as every grpo_zoo command
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("TQDM_DISABLE", "1")
    import logging

    logging.disable(logging.WARNING)
    from benchmarks.common import machine

    names = args.only or (["iteration_cost", "overhead"] if args.quick else list(NAMES))
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    result: dict = {"machine": machine(), "quick": args.quick}
    start = time.time()
    # libraries print build messages on stdout: while measuring, stdout goes to stderr
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        _measure(args, names, result, log, lambda: _save(args, result))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    result["seconds"] = time.time() - start
    text = json.dumps(_clean(result), indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.format == "json":
        print(text)
    else:
        from benchmarks.report import markdown

        print(markdown(result))
    return 0


def _save(args, result) -> None:
    """Write what is measured so far (a long run that fails later keeps it)."""
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(_clean(result), indent=1) + "\n")


def _measure(args, names, result, log, save) -> None:
    from benchmarks import iteration_cost, overhead

    if "iteration_cost" in names:
        log("iteration cost")
        result["iteration_cost"] = iteration_cost.run(args.quick, log)
        r = result["iteration_cost"]["ratio_T20"]
        result["iteration_cost_ratio_flow_over_flash_T20"] = r["measured"]
        result["predicted_ratio_from_nfe_T20"] = r["predicted_from_nfe"]
        result["predicted_ratio_from_flops_T20"] = r["predicted_from_flops"]
        save()
    if "overhead" in names:
        log("overhead")
        result["overhead"] = overhead.run(args.quick, log)
        result["sampler_overhead_ratio"] = max(s["ratio_per_nfe"] for s in result["overhead"]["sampler"])
        result["outside_model_share"] = max(s["outside_model_share"] for s in result["overhead"]["outside"])
        save()
    if "time_to_target" in names:
        from benchmarks import time_to_target

        log("time to target")
        result["time_to_target"] = time_to_target.run(Path(args.runs_dir), log=log)
    import torch.distributed as dist

    if dist.is_initialized():  # the trainers shared one process group
        dist.destroy_process_group()


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
