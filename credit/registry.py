"""The registry of credit strategies and what each one needs (docs/credit.md §6, §8).

A credit strategy maps attention statistics to per-token advantage weights γ:

    fn(waad, fai, mask, entropies=None, config=CreditConfig()) -> float32 [B, T]

with waad, fai, entropies float [B, T] and mask bool [B, T] (True on response tokens R). Each
strategy **declares what it needs** when it registers, and callers (the trainer, the inspector)
ask :func:`strategy_needs` instead of comparing names:

| need | meaning |
| --- | --- |
| ``attention`` | WAAD and FAI from a statistics pass (otherwise waad = 0, fai = NaN are passed) |
| ``entropies`` | the rollout policy's per-token entropies |
| ``reseed`` | a fresh ``config.seed`` per step (the caller derives it from seed and step) |
| ``identity`` | γ ≡ 1: the caller may pass its advantages through untouched (``uniform``) |

A user strategy registers with ``@register_credit("name", needs=(...))``; the default,
``("attention",)``, is what every strategy got before needs were declared. A dotted path
``package.module:function`` declares its needs with the :func:`credit_needs` decorator (default
``("attention",)`` as well). The built-ins are registered when ``rlattn.credit`` is imported (its
``__init__`` imports their modules), so any import from the package finds them.

``get_credit_fn`` wraps the strategy in a checker: inputs must be [B, T] tensors of one shape with a
bool mask, and the output must be a [B, T] tensor whose response-token weights are finite and
non-negative; anything else raises a ValueError naming the function. Outside R the returned γ is set
to 1.0: those tokens get no loss (their loss mask is 0), so their weight is irrelevant, and 1.0 keeps
γ·A harmless if a caller forgets the mask. γ is detached, float32, never renormalised or clipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .config import COMBINES, SELECTS, SIGNS, CreditConfig

__all__ = ["CREDIT_REGISTRY", "NEEDS", "CreditConfig", "CreditFn", "credit_needs", "get_credit_fn",
           "register_credit", "strategy_needs", "valid_names", "COMBINES", "SELECTS", "SIGNS"]

CreditFn = Callable[..., torch.Tensor]

#: Everything a strategy may declare it needs.
NEEDS = ("attention", "entropies", "reseed", "identity")
_DEFAULT_NEEDS = frozenset({"attention"})

#: name -> strategy function. Fill it through :func:`register_credit`.
CREDIT_REGISTRY: dict[str, CreditFn] = {}
_NEEDS: dict[str, frozenset[str]] = {}


def _check_needs(needs: Iterable[str], where: str) -> frozenset[str]:
    if isinstance(needs, str):
        needs = (needs,)
    needs = frozenset(needs)
    unknown = sorted(needs - set(NEEDS))
    if unknown:
        raise ValueError(f"{where}: needs={sorted(needs)!r} has {unknown}; allowed: {', '.join(NEEDS)}")
    return needs


def credit_needs(*needs: str) -> Callable[[CreditFn], CreditFn]:
    """Decorator for a strategy used by dotted path: declare what it needs (see the module table)."""

    def decorator(fn: CreditFn) -> CreditFn:
        fn.credit_needs = _check_needs(needs, f"credit_needs on {_describe(fn)}")
        return fn

    return decorator


def register_credit(name: str, needs: Iterable[str] = ("attention",)) -> Callable[[CreditFn], CreditFn]:
    """Decorator: register ``fn(waad, fai, mask, entropies=None, config=None)`` under ``name``.

    ``name`` is what YAML's ``credit_strategy`` says; ``needs`` what the caller must provide (the
    module table). A name already taken (built-ins included) raises ValueError. Returns ``fn``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"credit strategy name {name!r} is not a non-empty string without ':' "
            "(':' is reserved for dotted paths 'package.module:function')"
        )
    declared = _check_needs(needs, f"register_credit({name!r})")

    def decorator(fn: CreditFn) -> CreditFn:
        if not callable(fn):
            raise ValueError(f"register_credit({name!r}) decorates {fn!r}, which is not callable")
        if name in CREDIT_REGISTRY:
            raise ValueError(
                f"credit strategy {name!r} is already registered (by {_describe(CREDIT_REGISTRY[name])}); "
                "pick another name"
            )
        CREDIT_REGISTRY[name] = fn
        _NEEDS[name] = declared
        return fn

    return decorator


def valid_names() -> str:
    return ", ".join(repr(n) for n in sorted(CREDIT_REGISTRY))


def _describe(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}:{qualname}"


def _resolve(name_or_path: str) -> tuple[CreditFn, str, frozenset[str]]:
    """(function, label for errors, needs) of a registered name or a dotted path."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"credit strategy {name_or_path!r} is not a non-empty string; valid names: {valid_names()}")
    if ":" in name_or_path:
        from rlattn.utils import import_dotted

        fn = import_dotted(name_or_path, "credit strategy")
        needs = getattr(fn, "credit_needs", _DEFAULT_NEEDS)
        return fn, name_or_path, _check_needs(needs, f"credit strategy {name_or_path!r}")
    if name_or_path not in CREDIT_REGISTRY:
        hint = " (a dotted path needs a ':' before the function: 'package.module:function')" if "." in name_or_path else ""
        raise ValueError(
            f"unknown credit strategy {name_or_path!r}; valid names: {valid_names()}, "
            f"or a dotted path 'package.module:function'{hint}"
        )
    fn = CREDIT_REGISTRY[name_or_path]
    return fn, f"{name_or_path!r} ({_describe(fn)})", _NEEDS.get(name_or_path, _DEFAULT_NEEDS)


def strategy_needs(name_or_path: str) -> frozenset[str]:
    """What a strategy declared it needs (a subset of :data:`NEEDS`)."""
    return _resolve(name_or_path)[2]


def get_credit_fn(name_or_path: str) -> CreditFn:
    """The checked credit function for a registered name or a dotted path ``package.module:function``.

    Returns ``fn(waad, fai, mask, entropies=None, config=None) -> float32 [B, T]`` (``config=None``
    means ``CreditConfig()``). Unknown names raise a ValueError listing the valid ones. A dotted
    path is imported now, so a missing module or function fails here, not at the first batch.
    """
    fn, label, _ = _resolve(name_or_path)
    return _checked(fn, label)


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
