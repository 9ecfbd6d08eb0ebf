"""Rollout records: what was generated, how it was scored, and the credit each token received.

One record per completion: prompt, completion text and ids, tokens, rewards per function,
advantage, and per-token γ, WAAD, FAI and preplan/anchor flags. The trainer appends them as JSONL
(``rollouts.jsonl`` in the output dir, every ``logging_steps``); ``write_records`` also writes
Parquet. ``load_records`` reads either back as a list of dicts, for the inspection and evaluation
tools. NaN values are stored as null (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records to a JSONL file (created with its parent dir if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(_clean(r), ensure_ascii=False) + "\n")


def write_records(path: str | os.PathLike, records: list[dict]) -> None:
    """Write records to ``.jsonl`` or ``.parquet`` (by suffix), replacing the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in _clean(r).items()} for r in records]
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        if path.exists():
            path.unlink()
        append_records(path, records)
    else:
        raise ValueError(f"rollout records path {str(path)!r} must end in .jsonl or .parquet")


def load_records(path: str | os.PathLike) -> list[dict]:
    """Read records written by :func:`append_records` / :func:`write_records`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no rollout records at {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        out = pq.read_table(path).to_pylist()
        for r in out:
            if isinstance(r.get("rewards"), str):
                r["rewards"] = json.loads(r["rewards"])
        return out
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed rollout record ({e.msg})") from None
    return out
