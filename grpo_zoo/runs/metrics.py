"""metrics.jsonl: one JSON row per line; a row that does not parse is named by file:line."""

from __future__ import annotations

import json
from pathlib import Path

from grpo_zoo.errors import ConfigError
from grpo_zoo.runs.files import regular_file


class MetricsError(ConfigError):
    """A metrics file that does not parse: the message names file:line."""


KINDS = ("train", "eval")
"""The kinds of rows a trainer writes."""


def _parse_row(path: Path, lineno: int, raw: bytes) -> dict:
    where = f"{path}:{lineno}"
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        what = "an empty line" if not raw.strip() else f"not JSON ({err})"
        raise MetricsError(f"{where}: {what}; the metrics file is damaged") from None
    if not isinstance(row, dict):
        raise MetricsError(f"{where}: a {type(row).__name__}, not a row object; the metrics file is damaged")
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or row.get("kind") not in KINDS:
        raise MetricsError(
            f"{where}: a row without an integer `step` and a `kind` ({' or '.join(KINDS)}); the metrics file is damaged"
        )
    bad = next((k for k, v in row.items() if k not in ("kind", "step") and not _number(v)), None)
    if bad is not None:
        raise MetricsError(f"{where}: `{bad}` is {row[bad]!r}, not a number; the metrics file is damaged")
    if row["kind"] == "eval" and not isinstance(row.get("eval/reward"), int | float):
        raise MetricsError(f"{where}: an eval row without `eval/reward`; the metrics file is damaged")
    return row


def _number(value) -> bool:
    """A row's value: a number (NaN and infinities included: a diverged run logs them) or null."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def parse_metrics(path: Path, lines: list[bytes]) -> list[dict]:
    """Complete lines into rows: each one JSON object; steps never go back, no train step twice."""
    rows: list[dict] = []
    last_step, last_train = None, None
    for n, raw in enumerate(lines, 1):
        row = _parse_row(path, n, raw)
        if last_step is not None and row["step"] < last_step:
            raise MetricsError(f"{path}:{n}: step {row['step']} after step {last_step}; rows are doubled or mixed")
        if row["kind"] == "train" and last_train is not None and row["step"] <= last_train:
            raise MetricsError(f"{path}:{n}: a second train row for step {row['step']}; rows are doubled")
        last_step = row["step"]
        last_train = row["step"] if row["kind"] == "train" else last_train
        rows.append(row)
    return rows


def split_lines(path: Path) -> tuple[list[bytes], bytes]:
    """(complete lines, the torn tail: a last line without its newline, b"" if none)."""
    data = path.read_bytes() if regular_file(path, "metrics file") else b""  # never a FIFO or a folder
    lines = data.split(b"\n")
    tail = lines.pop()
    return lines, tail


def read_metrics(path: Path, torn_tail_ok: bool = True) -> tuple[list[dict], str | None]:
    """The rows of a metrics file and a note when its last line was torn (MetricsError on damage).

    A last line without its newline is the row a writer was writing (or a kill cut): it is
    left out with a note when `torn_tail_ok` (a run that may still be writing), else an error."""
    lines, tail = split_lines(path)
    rows = parse_metrics(path, lines)
    if not tail:
        return rows, None
    where = f"{path}:{len(lines) + 1}"
    if not torn_tail_ok:
        raise MetricsError(f"{where}: the last row is cut off (no newline) although the run ended; the file is damaged")
    return rows, f"{where}: left out the last row, cut off mid-write"
