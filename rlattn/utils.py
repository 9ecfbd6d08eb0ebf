"""Small helpers shared across the packages: dotted-path imports (the registries' escape hatch),
the recipe-path convention of every script's command line, and what this CPU computes fast."""

from __future__ import annotations

import functools
import importlib
import logging
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


#: The choices of the ``cpu_precision`` key (training, evaluation and difficulty-filter configs).
CPU_PRECISIONS = ("auto", "keep")


def check_cpu_precision(value: str) -> None:
    """Raise ValueError naming the key, the value and the choices unless ``value`` is one of :data:`CPU_PRECISIONS`."""
    if value not in CPU_PRECISIONS:
        raise ValueError(f"cpu_precision={value!r} is not one of {', '.join(map(repr, CPU_PRECISIONS))}")


def runs_on_cpu(use_cpu: bool = False) -> bool:
    """True when torch will compute on the CPU: ``use_cpu`` was asked for, or no CUDA, XPU or MPS device exists."""
    import torch

    if use_cpu:
        return True
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                or (mps is not None and mps.is_available()))


@functools.lru_cache(maxsize=None)
def cpu_has_native(dtype: str) -> bool:
    """Whether this CPU has native matmul kernels for ``dtype`` (``"bfloat16"`` / ``"float16"``; any other
    name: True).

    Why: torch runs bf16/fp16 matmuls through oneDNN only on CPUs with AVX-512 (or AMX); elsewhere it falls
    back to scalar kernels. Measured on a 2-core AVX2-only AMD EPYC, torch 2.13 (``bench/cpu_dtypes.py``): a
    1024 x 1024 matmul at 1.0 GFLOPS in bfloat16 and 159 in float32, so a bf16 recipe would run ~100x slower
    there than in float32, while on the AVX-512 BF16 machine the recipes were tuned on bf16 is 1.55x faster than fp32.
    """
    if dtype not in ("bfloat16", "float16"):
        return True
    import torch

    probe = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a torch without the probe: read the CPU's flags
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            return True  # cannot tell: keep what was asked for
        return bool({"avx512_bf16", "amx_bf16"} & flags) if dtype == "bfloat16" else bool({"avx512_fp16", "amx_fp16"} & flags)


def fast_cpu_dtype(dtype: str, cpu_precision: str = "auto", on_cpu: bool = True, doing: str | None = None) -> str:
    """``dtype``, or ``"float32"`` when ``cpu_precision`` is ``"auto"``, the work runs on the CPU and this CPU
    has no native kernels for ``dtype`` (:func:`cpu_has_native`): the one rule behind the ``cpu_precision``
    key of the training, evaluation and difficulty-filter configs. With ``doing`` ("training", ...), a
    change is logged as a warning that names it and ``cpu_precision: keep``."""
    if cpu_precision == "auto" and on_cpu and not cpu_has_native(dtype):
        if doing:
            warn_cpu_fallback(dtype, doing)
        return "float32"
    return dtype


def warn_cpu_fallback(dtype: str, doing: str) -> None:
    """The one warning of a ``cpu_precision: auto`` fallback: what was given up, for what, and how to keep it."""
    logging.getLogger("rlattn").warning(
        "this CPU has no native %s kernels (no AVX-512/AMX; ~100x slower than float32 here): %s in float32 "
        "(cpu_precision: keep runs %s)", dtype, doing, dtype)


def field_help(text: str) -> dict:
    """A dataclass field's ``metadata`` for TRL's argument parser. argparse %-formats help
    strings when it prints ``--help``, so a literal "%" is escaped: "a 95 % interval" made
    ``scripts/evaluate.py --help`` fail on "%i" ("a real number is required")."""
    return {"help": text.replace("%", "%%")}
