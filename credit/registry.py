"""Credit configuration and the registry of credit strategies (credit-spec.md §6, §8).

A credit strategy maps attention statistics to per-token advantage weights γ:

    fn(waad, fai, mask, entropies=None, config=CreditConfig()) -> float32 [B, T]

with waad, fai, entropies float [B, T] and mask bool [B, T] (True on response tokens R). The
built-in strategies (Li et al., arXiv 2510.13554, and the paper's baselines) live one per file in
``rlattn.credit`` and are registered under their YAML names with ``@register_credit``.

Wiring is explicit, not an import side effect somebody has to find: ``_BUILTIN_MODULES`` below lists
the built-in strategy modules, and ``_load_builtin_strategies()`` imports them the first time the
registry is used (``get_credit_fn``, ``register_credit``, ``CreditConfig`` validation, or reading
``CREDIT_REGISTRY`` from this module). ``from rlattn.credit.registry import get_credit_fn`` alone is
therefore enough. A user strategy is either registered with ``@register_credit("name")`` (import its
module before use) or named by a dotted path ``package.module:function``.

``get_credit_fn`` wraps the strategy in a checker: inputs must be [B, T] tensors of one shape with a
bool mask, and the output must be a [B, T] tensor whose response-token weights are finite and
non-negative; anything else raises a ValueError naming the function. Outside R the returned γ is set
to 1.0: those tokens get no loss (their loss mask is 0), so their weight is irrelevant, and 1.0 keeps
γ·A harmless if a caller forgets the mask. γ is detached, float32, never renormalised or clipped.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CREDIT_REGISTRY", "CreditConfig", "CreditFn", "get_credit_fn", "register_credit"]

CreditFn = Callable[..., torch.Tensor]

SIGNS = ("both", "positive", "negative")
COMBINES = ("sum", "max")

# The built-in strategy modules, imported by _load_builtin_strategies(). Add new files here.
_BUILTIN_MODULES = (
    "rlattn.credit.uniform",
    "rlattn.credit.local_chunk",
    "rlattn.credit.global_anchor",
    "rlattn.credit.coupled",
    "rlattn.credit.random_tokens",
    "rlattn.credit.high_entropy",
)

_REGISTRY: dict[str, CreditFn] = {}
_builtins_state = "unloaded"  # "unloaded" -> "loading" -> "loaded"


def _load_builtin_strategies() -> None:
    """Import the built-in strategy modules once, so their @register_credit decorators run."""
    global _builtins_state
    if _builtins_state != "unloaded":  # loaded, or loading (a built-in's decorator calling back)
        return
    _builtins_state = "loading"
    try:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
    except BaseException:
        _builtins_state = "unloaded"
        raise
    _builtins_state = "loaded"


def __getattr__(name: str) -> Any:
    # PEP 562: reading CREDIT_REGISTRY (also via `from ... import CREDIT_REGISTRY`) loads built-ins.
    if name == "CREDIT_REGISTRY":
        _load_builtin_strategies()
        return _REGISTRY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _valid_names() -> str:
    _load_builtin_strategies()
    return ", ".join(repr(n) for n in sorted(_REGISTRY))


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class CreditConfig:
    """Settings of the credit strategies (spec §6, §8). Validated on construction."""

    strategy: str = field(
        default="coupled",
        metadata={"help": "Credit strategy: a registered name (uniform, local_chunk, global_anchor, "
                  "coupled, random, high_entropy, or your own) or a dotted path 'package.module:function'."},
    )
    quantile: float = field(
        default=0.4,
        metadata={"help": "q of TopQ: the fraction of response tokens selected (0 < q <= 1)."},
    )
    gamma: float = field(
        default=1.5,
        metadata={"help": "γ_amp, the weight of selected tokens (>= 1; 1 gives plain GRPO)."},
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "coupled: share α of a dominated anchor's extra weight moved to its intro "
                  "token (0 <= α <= 1)."},
    )
    k: int = field(
        default=3,
        metadata={"help": "coupled: look-back window [t-k, t-1] for dominated anchors (integer >= 1)."},
    )
    sign: str = field(
        default="both",
        metadata={"help": "Which advantages γ scales: 'both', 'positive' (A >= 0 only) or 'negative' "
                  "(A < 0 only)."},
    )
    combine: str = field(
        default="sum",
        metadata={"help": "coupled: how overlapping terms combine: 'sum' (indicators add) or 'max' "
                  "(γ = the largest term's γ)."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "random: seed of the token draw (same seed and shape, same tokens)."},
    )
    dominated_waad_quantile: float = field(
        default=0.5,
        metadata={"help": "coupled [ours]: an anchor is dominated only if WAAD[t] <= this quantile of "
                  "WAAD over R (0.5 = median, linear interpolation)."},
    )
    dominated_delta_quantile: float = field(
        default=0.6,
        metadata={"help": "coupled [ours]: ... and max Δ over its window >= this quantile of Δ over R."},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key, the value and what is allowed."""

        def bad(key: str, allowed: str) -> ValueError:
            return ValueError(f"CreditConfig.{key}={getattr(self, key)!r} {allowed}")

        if not isinstance(self.strategy, str) or not self.strategy:
            raise bad("strategy", "is not a non-empty string")
        if ":" in self.strategy:
            module, _, attr = self.strategy.partition(":")
            if not module or not attr:
                raise bad("strategy", "is not a dotted path of the form 'package.module:function'")
        elif self.strategy not in _REGISTRY:
            _load_builtin_strategies()
            if self.strategy not in _REGISTRY:
                raise bad(
                    "strategy",
                    f"is not a registered credit strategy; valid names: {_valid_names()} "
                    "(or a dotted path 'package.module:function')",
                )
        if not _is_number(self.quantile) or not 0 < self.quantile <= 1:
            raise bad("quantile", "is not a number in (0, 1]")
        if not _is_number(self.gamma) or self.gamma < 1:
            raise bad("gamma", "is not a finite number >= 1 (γ_amp amplifies; 1.0 gives plain GRPO)")
        if not _is_number(self.alpha) or not 0 <= self.alpha <= 1:
            raise bad("alpha", "is not a number in [0, 1]")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise bad("k", "is not an integer >= 1")
        if self.sign not in SIGNS:
            raise bad("sign", "is not one of " + ", ".join(repr(s) for s in SIGNS))
        if self.combine not in COMBINES:
            raise bad("combine", "is not one of " + ", ".join(repr(c) for c in COMBINES))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "is not an integer")
        for key in ("dominated_waad_quantile", "dominated_delta_quantile"):
            value = getattr(self, key)
            if not _is_number(value) or not 0 <= value <= 1:
                raise bad(key, "is not a number in [0, 1]")


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def register_credit(name: str) -> Callable[[CreditFn], CreditFn]:
    """Decorator: register ``fn(waad, fai, mask, entropies=None, config=None)`` under ``name``.

    ``name`` is what YAML's ``credit_strategy`` says. A name already taken (built-ins included)
    raises ValueError. Returns the function unchanged.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"credit strategy name {name!r} is not a non-empty string without ':' "
            "(':' is reserved for dotted paths 'package.module:function')"
        )
    _load_builtin_strategies()

    def decorator(fn: CreditFn) -> CreditFn:
        if not callable(fn):
            raise ValueError(f"register_credit({name!r}) decorates {fn!r}, which is not callable")
        if name in _REGISTRY:
            raise ValueError(
                f"credit strategy {name!r} is already registered (by {_describe(_REGISTRY[name])}); "
                "pick another name"
            )
        _REGISTRY[name] = fn
        return fn

    return decorator


def _describe(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}:{qualname}"


def _import_path(path: str) -> CreditFn:
    from rlattn.utils import import_dotted

    return import_dotted(path, "credit strategy")


def get_credit_fn(name_or_path: str) -> CreditFn:
    """The checked credit function for a registered name or a dotted path ``package.module:function``.

    Returns ``fn(waad, fai, mask, entropies=None, config=None) -> float32 [B, T]`` (``config=None``
    means ``CreditConfig()``). Unknown names raise a ValueError listing the valid ones. A dotted
    path is imported now, so a missing module or function fails here, not at the first batch.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(
            f"credit strategy {name_or_path!r} is not a non-empty string; valid names: {_valid_names()}"
        )
    if ":" in name_or_path:
        return _checked(_import_path(name_or_path), name_or_path)
    _load_builtin_strategies()
    if name_or_path not in _REGISTRY:
        hint = ""
        if "." in name_or_path:
            hint = " (a dotted path needs a ':' before the function: 'package.module:function')"
        raise ValueError(
            f"unknown credit strategy {name_or_path!r}; valid names: {_valid_names()}, "
            f"or a dotted path 'package.module:function'{hint}"
        )
    fn = _REGISTRY[name_or_path]
    return _checked(fn, f"{name_or_path!r} ({_describe(fn)})")


def _checked(fn: CreditFn, label: str) -> CreditFn:
    @functools.wraps(fn)
    def credit_fn(
        waad: torch.Tensor,
        fai: torch.Tensor,
        mask: torch.Tensor,
        entropies: torch.Tensor | None = None,
        config: CreditConfig | None = None,
    ) -> torch.Tensor:
        if config is None:
            config = CreditConfig()
        _check_inputs(waad, fai, mask, entropies, config)
        gamma = fn(waad=waad, fai=fai, mask=mask, entropies=entropies, config=config)
        return _check_output(gamma, mask, label)

    return credit_fn


def _check_inputs(waad, fai, mask, entropies, config) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"credit: mask must be a bool tensor [B, T] (True on response tokens), got {got}")
    if mask.dim() != 2:
        raise ValueError(f"credit: mask must be 2-D [B, T], got shape {tuple(mask.shape)}")
    named = {"waad": waad, "fai": fai}
    if entropies is not None:
        named["entropies"] = entropies
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"credit: {name} must be a floating-point tensor [B, T], got {got}")
        if t.shape != mask.shape:
            raise ValueError(
                f"credit: {name} has shape {tuple(t.shape)} but mask has {tuple(mask.shape)}; "
                "they must be equal"
            )
    if not isinstance(config, CreditConfig):
        raise ValueError(f"credit: config must be a CreditConfig, got {type(config).__name__}")
    config.validate()  # a config mutated after construction is checked again


def _check_output(gamma: Any, mask: torch.Tensor, label: str) -> torch.Tensor:
    where = f"credit function {label} returned"
    if not isinstance(gamma, torch.Tensor):
        raise ValueError(f"{where} {type(gamma).__name__}, not a tensor [B, T]")
    if gamma.shape != mask.shape:
        raise ValueError(f"{where} shape {tuple(gamma.shape)}; expected the mask's {tuple(mask.shape)}")
    if gamma.is_complex() or gamma.dtype == torch.bool:
        raise ValueError(f"{where} dtype {gamma.dtype}; expected a real float tensor")
    if gamma.device != mask.device:
        raise ValueError(f"{where} a tensor on {gamma.device}; the inputs are on {mask.device}")
    gamma = torch.where(mask, gamma.detach().to(torch.float32), 1.0)  # [B, T] 1.0 outside R: no loss there
    if (~torch.isfinite(gamma) | (gamma < 0)).any():  # one check (one device sync) on the good path
        checks = ((torch.isnan(gamma), "NaN"), (torch.isinf(gamma), "infinite"), (gamma < 0, "negative"))
        for bad, what in checks:
            if bad.any():
                raise ValueError(
                    f"{where} {what} weights on {int(bad.sum())} response tokens "
                    f"(first at [b, t] = {bad.nonzero()[0].tolist()}); γ must be finite and >= 0"
                )
    return gamma
