"""Regenerate or check the golden metrics: `python -m tests.golden --update`.

--update     train every variant and rewrite tests/golden/<variant>.json
--out DIR    train and write the fresh records to DIR instead (what the test does)
--check      train and compare with the stored files; exit status 1 on a difference
--only NAME  restrict to some variants (repeatable)
--threads N  torch threads (default: torch's own choice, e.g. OMP_NUM_THREADS)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

if platform.machine().lower() in ("x86_64", "amd64") and "torch" not in sys.modules:
    # One instruction set for every x86 machine: ATen's AVX-512 kernels round otherwise than
    # its AVX2 ones, and AWM's rows drift by up to 3e-3 relative between the two (measured;
    # every other variant matched within RTOL). Read by torch at import, so set before it;
    # here, in the command's own process, so that no test session inherits it.
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

from tests import golden


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--update", action="store_true", help="rewrite tests/golden/<variant>.json")
    mode.add_argument("--out", type=Path, help="write fresh records to this directory")
    mode.add_argument("--check", action="store_true", help="compare fresh records with the stored ones")
    ap.add_argument("--only", action="append", help="variant name (repeatable); default: all")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = ap.parse_args(argv)

    table = golden.variants()
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"--only: unknown variant {unknown[0]!r} (choose from {', '.join(table)})", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        records = golden.run_variants(names, Path(tmp))
    if args.update:
        if not args.only:  # drop files of variants that no longer exist
            for stale in golden.GOLDEN_DIR.glob("*.json"):
                if stale.stem not in table:
                    stale.unlink()
        for name, rec in records.items():
            golden.golden_path(name).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(records)} golden files to {golden.GOLDEN_DIR}")
        return 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, rec in records.items():
            (args.out / f"{name}.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        return 0
    bad = 0
    for name, rec in records.items():
        path = golden.golden_path(name)
        diffs = golden.compare(json.loads(path.read_text()), rec) if path.exists() else [f"no {path}"]
        bad += bool(diffs)
        print(f"{name}: {'ok' if not diffs else 'DIFFERS'}")
        for d in diffs:
            print(f"  {d}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
