"""Rollout records: what was generated, how it was scored, and the credit each token received.

One record per completion: prompt, completion text and ids, tokens, rewards per function,
advantage, and per-token γ, WAAD, FAI and preplan/anchor flags. The trainer appends them as JSONL
(``rollouts.jsonl`` in the output dir, every ``logging_steps``); ``write_records`` also writes
Parquet. ``load_records`` reads either back as a list of dicts, for the inspection and evaluation
tools. NaN values are stored as null (JSON has no NaN). ``truncate_records`` cuts a file back to
the records before a step (a resumed run writes the later ones again), atomically.
"""

from __future__ import annotations

import json
import math
import os

from rlattn.utils import write_atomic
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


def records_path(output_dir: str | os.PathLike, rank: int = 0) -> Path:
    """Where a training process appends its records: ``rollouts.jsonl`` (rank 0), ``rollouts-rank<r>.jsonl``."""
    return Path(output_dir) / ("rollouts.jsonl" if rank == 0 else f"rollouts-rank{rank}.jsonl")


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records to a JSONL file (created with its parent dir if needed), in one write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in records)
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def truncate_records(path: str | os.PathLike, before_step: int) -> tuple[int, int]:
    """Keep the records of the JSONL file ``path`` whose ``step`` is below ``before_step``; drop the
    rest and any torn line (a write cut short). The file is replaced whole (a temporary sibling,
    fsynced, renamed over it), so a crash leaves either the old or the new file. Records without a
    ``step`` are kept. Returns ``(kept, dropped)``; a missing file gives ``(0, 0)``."""
    path = Path(path)
    if not path.is_file():
        return 0, 0
    kept: list[str] = []
    dropped = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, (int, float)) and step >= before_step:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if not dropped:
        return len(kept), 0
    write_atomic(path, "".join(kept))
    return len(kept), dropped


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
