"""Small helpers shared across the packages: dotted-path imports (the registries' escape hatch)
and the recipe-path convention of every script's command line."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence


def import_dotted(path: str, what: str) -> Callable:
    """Import ``package.module:attr[.attr...]`` and return it; ``what`` names it in errors.

    Users' escape hatch from the registries: ``credit_strategy: my_pkg.credit:fn`` or
    ``reward_funcs: [my_pkg.rewards:fn]``. Every failure is a ValueError that says which part failed.
    """
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"{what} {path!r} is not a dotted path 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({err})") from err
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is not callable (got {type(obj).__name__})")
    return obj


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Allow ``grpo.py recipe.yaml [--key value ...]`` as well as ``--config recipe.yaml``."""
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        if "--config" in argv:
            raise ValueError(f"give the recipe either positionally ({argv[0]}) or with --config, not both")
        argv = ["--config", argv[0]] + argv[1:]
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML path")
        if not Path(argv[i + 1]).is_file():
            raise FileNotFoundError(f"recipe not found: {argv[i + 1]}")
    return argv


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` gets ``text`` whole or not at all: a temporary sibling, fsynced, renamed over it, and
    the directory fsynced (the one way rlattn rewrites a file a crash must not leave half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
