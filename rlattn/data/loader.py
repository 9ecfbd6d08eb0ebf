"""``load_dataset``: one entry point for bundled sets, Countdown, local files and hub datasets.

Every result is a ``datasets.Dataset`` in the shape TRL's GRPOTrainer and rlattn's rewards
expect:

| column | meaning |
| --- | --- |
| ``id`` | str, unique within the set |
| ``prompt`` | the template's output: ``[{"role", "content"}, ...]`` or a plain string |
| ``problem`` | the problem statement the prompt was built from |
| ``solution`` | the **final answer** as a string (from the source's ``answer`` field); for Countdown a reference equation |
| other fields | kept as they are (``level``, ``type``, ``subject``, ``url``, ``nums``, ``target``, ...) |

Renames, so nothing collides: the source's worked ``solution`` (a rationale, not an answer)
becomes ``reference_solution``; a source ``prompt`` field is dropped (the template builds it).
TRL passes every column but ``prompt`` to reward functions as keyword arguments.
"""

from __future__ import annotations

import difflib
import gzip
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import datasets as hf_datasets

from . import arithmetic as _arith
from . import countdown as _countdown
from .bundled import BUNDLED_DATASETS, BundledDataset, family_splits, open_bundled
from .templates import PromptTemplate, get_template

__all__ = ["is_seeded", "load_dataset", "known_dataset_names"]

#: Keyword arguments ``load_dataset`` forwards to the Countdown generator.
COUNTDOWN_OPTIONS = ("num_numbers", "min_number", "max_number", "max_target")

#: File name endings read as local files.
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


def is_seeded(name: str) -> bool:
    """Whether ``name`` is drawn from a seed with no fixed split (the toy tasks of
    :mod:`rlattn.data.synthetic`): ``load_dataset(name, limit=n, seed=s)`` gives its first n rows."""
    return isinstance(name, str) and name in _synthetic_names()


def known_dataset_names() -> list[str]:
    """Every bundled name: the flat names plus the family names used with ``split=``."""
    families = {d.family for d in BUNDLED_DATASETS.values()}
    return sorted(set(BUNDLED_DATASETS) | families | set(_synthetic_names()))


def load_dataset(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    template: str | PromptTemplate = "chat",
    limit: int | None = None,
    seed: int | None = None,
    *,
    problem_field: str | None = None,
    answer_field: str | None = None,
    levels: Iterable[int] | None = None,
    filter_fn: Callable[[dict[str, Any]], bool] | None = None,
    hub_config: str | None = None,
    n: int | None = None,
    steps: Iterable[int] | None = None,
    **countdown_kwargs: Any,
) -> hf_datasets.Dataset:
    """Load a dataset as ``id`` / ``prompt`` / ``problem`` / ``solution`` (+ extra) columns.

    Args:
        name_or_path: one of
            - a bundled name (``rlattn.data.BUNDLED_DATASETS``): flat (``"gsm8k_test"``,
              ``"math500"``, ...) or a family with ``split`` (``"gsm8k"`` + ``"test"``);
            - ``"countdown"`` (+ ``split="train"|"test"``, or ``n=`` / ``seed=``), generated;
            - ``"arith"`` (+ ``split="train"|"test"``, flat ``arith_train`` / ``arith_test``), graded
              arithmetic word problems, generated (:mod:`rlattn.data.arithmetic`; ``steps=`` keeps
              only problems of those step counts, ``n=`` / ``seed=`` as for Countdown);
            - ``"synthetic_quadrant"`` / ``"synthetic_key_lookup"``: the toy tasks of
              :mod:`rlattn.data.synthetic` (``n=`` rows, default ``limit`` or 512; ``seed=``);
            - a local file ending in ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.json.gz`` or
              ``.parquet`` (a JSON file holds a list of objects, or one object per line);
            - a hub dataset id ``"org/name"`` (or a local directory), read with
              ``datasets.load_dataset(name, hub_config, split=split or "train")``.
              A name with no ``/`` that is not bundled is an error at once, so typos do not
              wait on the network.
        split: ``"train"``/``"test"`` for families; must match a flat name's own split if given.
            Local files are one ``"train"`` split (``None`` or ``"train"``).
        template: prompt template name (``rlattn.data.PROMPT_TEMPLATES``: ``chat``, ``plain``,
            ``r1``), a ``"pkg.module:fn"`` path, or a callable ``fn(problem) -> messages | str``.
        limit: keep at most this many rows (after filtering and shuffling).
        seed: shuffle with ``random.Random(seed)`` before ``limit`` (``None``: keep file order).
            For Countdown, the generator seed instead (overrides the split's fixed seed).
        problem_field: source field holding the problem (default ``problem``, else ``question``).
        answer_field: source field holding the final answer (default ``answer``).
        levels: keep only rows whose ``level`` is in this set (e.g. ``(3, 4, 5)`` for MATH).
        filter_fn: keep only rows for which ``filter_fn(row)`` is true (row before templating).
        hub_config: config name for hub datasets (e.g. ``"main"`` for ``openai/gsm8k``).
        n: Countdown only: number of puzzles (overrides the split's fixed size).
        **countdown_kwargs: Countdown only: ``num_numbers``, ``min_number``, ``max_number``,
            ``max_target`` (see ``rlattn.data.countdown.generate_countdown``).

    Raises:
        ValueError: unknown name/split/template, malformed file, missing fields, empty result.
        FileNotFoundError: a local file path that does not exist.
    """
    build_prompt = get_template(template)  # fail on a bad template before reading any data
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    level_set = None if levels is None else set(levels)

    unknown = sorted(set(countdown_kwargs) - set(COUNTDOWN_OPTIONS))
    if unknown:
        raise TypeError(
            f"load_dataset() got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"the extra keywords it takes are Countdown's: {', '.join(COUNTDOWN_OPTIONS)}"
        )

    name = os.fspath(name_or_path)
    if name in _synthetic_names():
        return _synthetic(name, split, n, limit, seed, steps, countdown_kwargs)
    arith_split = _resolve_arith(name, split)
    if arith_split is not False:
        if countdown_kwargs or any(v is not None for v in (problem_field, answer_field, hub_config)):
            raise ValueError(f"{name!r} takes split=, n=, seed=, steps=, limit=, levels=, filter_fn= only")
        label = name if split is None else f"{name} (split {split!r})"
        rows = _arith_rows(arith_split, n, seed, limit, filter_fn, steps)
        rows = _filter(rows, label, level_set, filter_fn)
        return _to_dataset(rows[:limit] if limit is not None else rows, build_prompt, label)
    if steps is not None:
        raise ValueError(f"steps= applies only to 'arith', not to {name!r}")
    countdown_split = _resolve_countdown(name, split)
    if countdown_split is not False:
        for flag, value in (("problem_field", problem_field), ("answer_field", answer_field),
                            ("hub_config", hub_config)):
            if value is not None:
                raise ValueError(f"{flag}= does not apply to 'countdown'")
        label = name if split is None else f"{name} (split {split!r})"
        rows = _countdown_rows(countdown_split, n, seed, limit, filter_fn, level_set,
                               countdown_kwargs)
        shuffle_seed = None  # the generator's order is already random
    else:
        if n is not None or countdown_kwargs:
            extra = ", ".join(f"{k}=" for k in ["n"] * (n is not None) + sorted(countdown_kwargs))
            raise ValueError(f"{extra} applies only to 'countdown', not to {name!r}")
        label, records = _open_records(name, split, hub_config)
        rows = list(_normalize(records, label, problem_field, answer_field))
        if not rows:
            raise ValueError(f"{label} has no rows")
        shuffle_seed = seed
    rows = _filter(rows, label, level_set, filter_fn)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    if limit is not None:
        rows = rows[:limit]
    return _to_dataset(rows, build_prompt, label)


# ---------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------


def _unknown_split(name: str, split: str, available: Iterable[str]) -> ValueError:
    return ValueError(
        f"unknown split {split!r} for {name!r}; available: "
        f"{', '.join(repr(s) for s in sorted(available))}"
    )


def _resolve_countdown(name: str, split: str | None):
    """The Countdown split name (or None for ``n=``-only use), or False if not Countdown."""
    info = BUNDLED_DATASETS.get(name)
    if name == "countdown":
        if split is not None and split not in _countdown.COUNTDOWN_SPLITS:
            raise _unknown_split(name, split, _countdown.COUNTDOWN_SPLITS)
        return split
    if info is not None and info.family == "countdown":
        if split is not None and split != info.split:
            raise _unknown_split(name, split, [info.split])
        return info.split
    return False


def _resolve_arith(name: str, split: str | None):
    """The arithmetic split name (or None for ``n=``-only use), or False if not ``arith``."""
    if name == "arith":
        if split is not None and split not in _arith.ARITHMETIC_SPLITS:
            raise _unknown_split(name, split, _arith.ARITHMETIC_SPLITS)
        return split
    info = BUNDLED_DATASETS.get(name)
    if info is not None and info.family == "arith":
        if split is not None and split != info.split:
            raise _unknown_split(name, split, [info.split])
        return info.split
    return False


def _arith_rows(split, n, seed, limit, filter_fn, steps) -> list[dict]:
    preset = _arith.ARITHMETIC_SPLITS.get(split) if split else None
    if preset is None and (n is None or seed is None):
        raise ValueError("'arith' needs split= one of "
                         f"{', '.join(repr(s) for s in _arith.ARITHMETIC_SPLITS)}, or both n= and seed=")
    count = n if n is not None else preset.n
    gen_seed = seed if seed is not None else preset.seed
    if limit is not None and filter_fn is None:
        count = min(count, limit)  # rows are generated in sequence: a prefix is the same rows
    rows = []
    for row in _arith.iter_word_problems(count, gen_seed, partition=split, steps=tuple(steps) if steps else (1, 2, 3)):
        row = dict(row)
        row["solution"] = row.pop("answer")
        rows.append(row)
    return rows


def _synthetic_names() -> tuple[str, ...]:
    from .synthetic import SYNTHETIC_DATASETS

    return tuple(SYNTHETIC_DATASETS)


def _synthetic(name, split, n, limit, seed, steps, options) -> hf_datasets.Dataset:
    """The toy tasks build their own prompts (the quadrant task's carry an image part)."""
    from .synthetic import load_synthetic

    if split is not None or steps is not None:
        raise ValueError(f"{name!r} is generated from n= and seed=; split= and steps= do not apply")
    count = n if n is not None else (limit if limit is not None else 512)
    return load_synthetic(name, n=min(count, limit) if limit is not None else count, seed=seed or 0, **options)


def _resolve_bundled(name: str, split: str | None) -> BundledDataset | None:
    if name in BUNDLED_DATASETS:
        info = BUNDLED_DATASETS[name]
        if split is not None and split != info.split:
            raise _unknown_split(name, split, [info.split])
        return info
    splits = family_splits(name)
    if not splits:
        return None
    if split is None:
        if len(splits) == 1:
            return next(iter(splits.values()))
        raise ValueError(
            f"{name!r} has several splits; pass split= one of "
            f"{', '.join(repr(s) for s in sorted(splits))} "
            f"(or a flat name: {', '.join(d.name for d in splits.values())})"
        )
    if split not in splits:
        raise _unknown_split(name, split, splits)
    return splits[split]


def _is_local_file_name(name: str) -> bool:
    return name.lower().endswith(LOCAL_SUFFIXES)


def _unknown_name_message(name: str) -> str:
    known = known_dataset_names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"{name!r} is not a bundled name{hint} (known: {', '.join(known)})"


def _open_records(name: str, split: str | None, hub_config: str | None):
    """(label, iterable of (locator, dict)) for a bundled set, a local file or a hub set."""
    info = _resolve_bundled(name, split)
    if info is not None:
        label = f"bundled dataset {info.name!r}"
        return label, _iter_jsonl(open_bundled(info.name), label)

    if _is_local_file_name(name) or os.path.isfile(name):
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"dataset file not found: {name}")
        if not path.is_file():
            raise ValueError(f"{name} is not a file")
        if split not in (None, "train"):
            raise ValueError(
                f"split={split!r} does not apply to a local file ({name}); a file is one split: "
                "pass split=None or 'train'"
            )
        return f"file {name}", _read_local(path)

    if "/" not in name and not os.path.isdir(name):
        raise ValueError(
            f"{_unknown_name_message(name)}; hub datasets need an 'org/name' id, local files "
            f"one of the endings {', '.join(LOCAL_SUFFIXES)}"
        )
    hub_split = split or "train"
    try:
        ds = hf_datasets.load_dataset(name, hub_config, split=hub_split)
    except Exception as err:  # any hub/network/format failure: say what was tried
        raise ValueError(
            f"{_unknown_name_message(name)} and could not be loaded from the hub: "
            f"{type(err).__name__}: {err}"
        ) from err
    label = f"hub dataset {name!r} (split {hub_split!r})"
    return label, ((f"row {i}", row) for i, row in enumerate(ds, start=1))


# ---------------------------------------------------------------------------------------------
# Readers: each yields (1-based locator such as "line 3", dict)
# ---------------------------------------------------------------------------------------------


def _iter_jsonl(raw: io.IOBase, label: str) -> Iterator[tuple[str, dict]]:
    with raw:
        for lineno, line in enumerate(raw, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{label}, line {lineno}: not valid UTF-8 ({err})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{label}, line {lineno}: malformed JSON ({err.msg} at column {err.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{label}, line {lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield f"line {lineno}", obj


def _open_maybe_gzip(path: Path) -> io.IOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_local(path: Path) -> Iterator[tuple[str, dict]]:
    label = f"file {path}"
    lower = path.name.lower()
    if lower.endswith(".parquet"):
        return _read_parquet(path, label)
    if lower.endswith((".json", ".json.gz")):
        return _read_json(path, label)
    # .jsonl / .jsonl.gz, and existing files with other endings: JSON lines.
    return _iter_jsonl(_open_maybe_gzip(path), label)


def _read_json(path: Path, label: str) -> Iterator[tuple[str, dict]]:
    """A JSON array of objects; a file with one object per line is read as JSONL."""
    with _open_maybe_gzip(path) as fh:
        try:
            text = fh.read().decode("utf-8")
        except (UnicodeDecodeError, OSError) as err:
            raise ValueError(f"{label}: cannot read as UTF-8 text ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: JSON lines
            return _iter_jsonl(io.BytesIO(text.encode("utf-8")), label)
        raise ValueError(
            f"{label}, line {err.lineno}: malformed JSON ({err.msg} at column {err.colno})"
        ) from None
    if isinstance(data, dict):
        return iter([("item 1", data)])
    if not isinstance(data, list):
        raise ValueError(f"{label}: expected a list of objects, got {type(data).__name__}")
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise ValueError(f"{label}, item {i}: expected a JSON object, got {type(obj).__name__}")
    return ((f"item {i}", obj) for i, obj in enumerate(data, start=1))


def _read_parquet(path: Path, label: str) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{label}: not a readable Parquet file ({err})") from None
    return ((f"row {i}", obj) for i, obj in enumerate(table.to_pylist(), start=1))


# ---------------------------------------------------------------------------------------------
# Row normalization, filtering, Dataset building
# ---------------------------------------------------------------------------------------------


def _as_answer(value: Any, field: str, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        got = "null" if value is None else type(value).__name__
        raise ValueError(f"{where}: field {field!r} must be a string or a number, got {got}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if not text:
        raise ValueError(f"{where}: field {field!r} is empty")
    return text


def _normalize(
    records: Iterable[tuple[str, dict]],
    label: str,
    problem_field: str | None,
    answer_field: str | None,
) -> Iterator[dict[str, Any]]:
    """Map source rows to ``id``/``problem``/``solution`` + extras, checking the fields."""
    answer_key = answer_field or "answer"
    problem_key = problem_field
    seen_ids: set[str] = set()
    for index, (locator, row) in enumerate(records):
        where = f"{label}, {locator}"
        if problem_key is None:  # decided once, from the first row
            problem_key = "question" if "problem" not in row and "question" in row else "problem"
        for key, flag in ((problem_key, "problem_field"), (answer_key, "answer_field")):
            if key not in row:
                alt = " (or 'question')" if key == "problem" and problem_field is None else ""
                raise ValueError(
                    f"{where}: missing field {key!r}{alt} (fields present: "
                    f"{', '.join(sorted(map(str, row))) or 'none'}); pass {flag}= to use another"
                )
        problem = row[problem_key]
        if not isinstance(problem, str) or not problem.strip():
            got = "empty" if isinstance(problem, str) else type(problem).__name__
            raise ValueError(
                f"{where}: field {problem_key!r} must be a non-empty string, got {got}"
            )
        solution = _as_answer(row[answer_key], answer_key, where)
        raw_id = row.get("id")
        row_id = str(raw_id) if raw_id is not None else f"{index}"
        if row_id in seen_ids:
            raise ValueError(f"{where}: duplicate id {row_id!r}")
        seen_ids.add(row_id)
        out: dict[str, Any] = {"id": row_id, "problem": problem, "solution": solution}
        for key, value in row.items():
            if key in (problem_key, answer_key, "id", "prompt"):
                continue
            if key == "solution":
                key = "reference_solution"
            out.setdefault(key, value)
        yield out


def _countdown_rows(split, n, seed, limit, filter_fn, level_set, kwargs) -> list[dict]:
    if level_set is not None:
        raise ValueError("levels= does not apply to 'countdown' (its rows have no 'level')")
    preset = _countdown.COUNTDOWN_SPLITS.get(split) if split else None
    if preset is None and (n is None or seed is None):
        raise ValueError(
            "'countdown' needs split= one of "
            f"{', '.join(repr(s) for s in _countdown.COUNTDOWN_SPLITS)}, or both n= and seed="
        )
    count = n if n is not None else preset.n
    gen_seed = seed if seed is not None else preset.seed
    if limit is not None and filter_fn is None and isinstance(count, int):
        count = min(count, limit)  # rows are generated in sequence: a prefix is the same rows
    return list(_countdown.iter_countdown(count, gen_seed, partition=split, **kwargs))


def _filter(rows, label, level_set, filter_fn):
    if level_set is not None:
        if not any("level" in r for r in rows):
            fields = ", ".join(sorted(rows[0])) if rows else "none"
            raise ValueError(f"levels= needs a 'level' field; {label} has: {fields}")
        rows = [r for r in rows if r.get("level") in level_set]
    if filter_fn is not None:
        rows = [r for r in rows if filter_fn(r)]
    if not rows:
        what = []
        if level_set is not None:
            what.append(f"levels={sorted(level_set)}")
        if filter_fn is not None:
            what.append(f"filter_fn={getattr(filter_fn, '__name__', filter_fn)!r}")
        raise ValueError(f"{label}: no rows left after filtering ({', '.join(what)})")
    return rows


def _to_dataset(rows: list[dict], build_prompt: PromptTemplate, label: str) -> hf_datasets.Dataset:
    order = ["id", "prompt", "problem", "solution"]
    for row in rows:
        for key in row:
            if key not in order:
                order.append(key)
    columns: dict[str, list] = {key: [] for key in order}
    for row in rows:
        columns["prompt"].append(build_prompt(row["problem"]))
        for key in order:
            if key != "prompt":
                columns[key].append(row.get(key))
    try:
        return hf_datasets.Dataset.from_dict(columns)
    except Exception as err:  # pyarrow cannot type a column: find which one
        import pyarrow as pa

        for key, values in columns.items():
            try:
                pa.array(values)
            except Exception:
                kinds = sorted({type(v).__name__ for v in values})
                raise ValueError(
                    f"{label}: field {key!r} mixes value types ({', '.join(kinds)}); "
                    "make it one type per field"
                ) from err
        raise
