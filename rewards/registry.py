"""The reward registry (YAML name -> factory) and the safety wrapper every reward runs inside.

Why: recipes name rewards (``reward_funcs: [accuracy, format]``), so a name has to map to code
in one findable place, with loud errors for typos and bad options. And a reward that raises or
returns NaN must not crash a multi-hour run nor quietly read as 0: it becomes ``None`` for
that sample ("cannot verify"; TRL turns it into NaN and leaves it out of the reward sum and
the logged means) and is counted, so the failure rate can be logged as a metric.

- ``@register_reward("name")`` registers a *factory* ``get_<name>_reward(**options)`` that
  returns a reward function, or a plain reward function (a callable with a ``completions``
  parameter), which then takes no options. Duplicate names raise.
- :func:`get_reward_fn` resolves a registered name or a dotted path ``package.module:function``
  (same factory/function rule), checks the options against the factory's signature, builds
  the reward and wraps it in :func:`safe_reward`.
- :class:`SafeReward` (what :func:`safe_reward` returns) keeps the reward's ``__name__`` (TRL
  logs ``rewards/<__name__>/mean`` and ``/std`` by it), counts calls and failures in
  ``.stats`` (:class:`RewardStats`), warns with the exception the first time, and, when TRL
  passes its ``log_metric`` hook (TRL >= 1.x does), logs ``rewards/<name>/failed_frac`` and
  ``rewards/<name>/none_frac`` per batch.
- :meth:`SafeReward.bound` (the scripts apply it to every reward, from ``reward_call_timeout_s``,
  ``reward_max_failed_steps`` and ``reward_max_failed_frac``): each call runs in a worker thread
  and gets at most ``call_timeout_s`` seconds; a call past the bound gives ``None`` for every
  sample (counted as failed, and in ``.stats.timeouts``; one warning per reward) and its thread
  is abandoned. A reward whose failed share stays at or above ``max_failed_frac`` for
  ``max_failed_steps`` consecutive calls raises :class:`RewardFailedError`, which stops the run,
  naming the reward and its first failure.

The reward contract is TRL's: ``fn(completions, **kwargs) -> list[float | None]``, one value
per completion, every dataset column (``solution``, ``nums``, ...) arriving as a keyword.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "REWARD_REGISTRY",
    "RewardFailedError",
    "RewardStats",
    "SafeReward",
    "bound_rewards",
    "get_reward_fn",
    "get_reward_fns",
    "register_reward",
    "safe_reward",
]

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]
#: YAML name -> factory. A factory called with the reward's options returns the reward function.
REWARD_REGISTRY: dict[str, Callable[..., RewardFn]] = {}


# --------------------------------------------------------------------------------------------
# Registration and lookup
# --------------------------------------------------------------------------------------------
def _is_reward_fn(obj: Any) -> bool:
    """A reward function takes ``completions``; anything else callable is a factory."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in params


def _as_factory(fn: RewardFn, name: str) -> Callable[[], RewardFn]:
    def factory() -> RewardFn:
        return fn

    factory.__name__ = f"get_{name}_reward"
    factory.__doc__ = fn.__doc__
    factory.wraps_reward_fn = fn  # type: ignore[attr-defined]
    return factory


def register_reward(name: str, obj: Callable | None = None):
    """Register a reward factory (or a plain reward function) under a YAML name.

    Use as a decorator, ``@register_reward("my_reward")``, or call
    ``register_reward("my_reward", fn)``. Returns the object unchanged. Raises ValueError on a
    duplicate or malformed name.
    """
    if not isinstance(name, str) or not name.strip() or ":" in name or name != name.strip():
        raise ValueError(f"reward names are non-empty strings without ':' or surrounding spaces, got {name!r}")

    def decorator(target: Callable) -> Callable:
        if not callable(target):
            raise TypeError(f"register_reward({name!r}) needs a callable, got {type(target).__name__}")
        if name in REWARD_REGISTRY:
            raise ValueError(f"a reward named {name!r} is already registered ({REWARD_REGISTRY[name].__module__})")
        REWARD_REGISTRY[name] = _as_factory(target, name) if _is_reward_fn(target) else target
        return target

    return decorator if obj is None else decorator(obj)


def _resolve_dotted(path: str) -> Callable:
    from rlattn.utils import import_dotted

    return import_dotted(path, "reward")


def get_reward_fn(name: str, **kwargs: Any) -> "SafeReward":
    """The reward function for a registered name or a ``package.module:function`` path.

    ``kwargs`` are the factory's options (``get_reward_fn("soft_overlong",
    max_completion_len=512, soft_punish_cache=64)``). Unknown names raise a ValueError listing
    the valid ones; unknown or missing options raise a ValueError naming the key. The result is
    wrapped in :func:`safe_reward`.
    """
    if not isinstance(name, str):
        raise ValueError(f"a reward is named by a string, got {type(name).__name__}")
    if ":" in name:
        target = _resolve_dotted(name)
        if _is_reward_fn(target):
            target = _as_factory(target, getattr(target, "__name__", "custom"))
    elif name in REWARD_REGISTRY:
        target = REWARD_REGISTRY[name]
    else:
        valid = ", ".join(sorted(REWARD_REGISTRY)) or "(none registered)"
        raise ValueError(
            f"unknown reward {name!r}; valid names: {valid}; or a dotted path 'package.module:function'"
        )

    wrapped = getattr(target, "wraps_reward_fn", None)
    if wrapped is not None and kwargs:
        raise ValueError(
            f"reward {name!r} is a plain reward function and takes no options; got {', '.join(map(repr, kwargs))}. "
            "Register a factory get_<name>_reward(...) to make it configurable."
        )
    _check_options(name, target, kwargs)
    fn = target(**kwargs)
    if not callable(fn):
        raise TypeError(f"the factory for reward {name!r} returned {type(fn).__name__}, not a callable")
    return safe_reward(fn)


def _check_options(name: str, factory: Callable, kwargs: Mapping[str, Any]) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in allowed:
            raise ValueError(
                f"reward {name!r}: unknown option {key!r}; valid options: {', '.join(allowed) or '(none)'}"
            )
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        missing = [
            p.name
            for p in params.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in kwargs
        ]
        if missing:
            raise ValueError(f"reward {name!r}: missing required option {missing[0]!r} ({exc})") from None
        raise ValueError(f"reward {name!r}: {exc}") from None


def get_reward_fns(names: Iterable[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> list["SafeReward"]:
    """Several rewards at once; ``options`` maps a reward name to its factory options."""
    names = list(names)
    options = dict(options or {})
    stray = [key for key in options if key not in names]
    if stray:
        raise ValueError(f"options given for reward {stray[0]!r}, which is not among the rewards {names}")
    return [get_reward_fn(name, **dict(options.get(name, {}))) for name in names]


# --------------------------------------------------------------------------------------------
# Safety wrapper
# --------------------------------------------------------------------------------------------
@dataclass
class RewardStats:
    """Counters one wrapped reward keeps over its lifetime.

    calls: batches scored. samples: completions scored. failed: samples turned into ``None``
    because the function raised, returned the wrong number of values, returned NaN, inf or
    a non-number, or did not return within its bound. none: samples that came out ``None`` in
    total (``failed`` plus the function's own "cannot verify"). timeouts: calls past the bound
    (each abandoned in its thread).
    """

    calls: int = 0
    samples: int = 0
    failed: int = 0
    none: int = 0
    timeouts: int = 0
    last_error: str | None = field(default=None, repr=False)
    first_error: str | None = field(default=None, repr=False)

    @property
    def failed_frac(self) -> float:
        return self.failed / self.samples if self.samples else 0.0

    @property
    def none_frac(self) -> float:
        return self.none / self.samples if self.samples else 0.0

    def as_metrics(self, name: str) -> dict[str, float]:
        """``{"rewards/<name>/failed_frac": ..., "rewards/<name>/none_frac": ...}`` over the lifetime."""
        return {f"rewards/{name}/failed_frac": self.failed_frac, f"rewards/{name}/none_frac": self.none_frac}


class SafeReward:
    """A reward function that never raises and never returns NaN; see :func:`safe_reward`."""

    def __init__(self, fn: RewardFn):
        self.fn = fn
        functools.update_wrapper(self, fn, updated=())
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.stats = RewardStats()
        self._lock = threading.Lock()
        self._warned = False
        self.call_timeout_s: float | None = None
        self.max_failed_steps = 0
        self.max_failed_frac = 1.0
        self._failed_streak = 0
        self._warned_timeout = False
        self._abandoned: list[threading.Thread] = []

    def bound(self, call_timeout_s: float | None = None, max_failed_steps: int = 0,
              max_failed_frac: float = 1.0) -> "SafeReward":
        """Bound each call to ``call_timeout_s`` seconds (None: unbounded, in the caller's thread), and
        raise :class:`RewardFailedError` once ``max_failed_steps`` consecutive calls (0: never) each
        failed on at least ``max_failed_frac`` of their samples. Returns self."""
        t = call_timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf):
            raise ValueError(f"reward_call_timeout_s={t!r} must be a positive number of seconds (0 or None: no bound)")
        if isinstance(max_failed_steps, bool) or not isinstance(max_failed_steps, int) or max_failed_steps < 0:
            raise ValueError(f"reward_max_failed_steps={max_failed_steps!r} must be an int >= 0 (0: never stop)")
        if not 0 < float(max_failed_frac) <= 1:
            raise ValueError(f"reward_max_failed_frac={max_failed_frac!r} must be a fraction in (0, 1]")
        self.call_timeout_s = None if call_timeout_s is None else float(call_timeout_s)
        self.max_failed_steps = max_failed_steps
        self.max_failed_frac = float(max_failed_frac)
        return self

    @property
    def abandoned_running(self) -> int:
        """Calls abandoned at the bound whose threads still run."""
        with self._lock:
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            return len(self._abandoned)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")
        state["_abandoned"] = []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SafeReward({self.__name__}, {self.stats})"

    def __call__(self, completions, *args, **kwargs) -> list[float | None]:
        n = len(completions)
        if self.call_timeout_s is not None:
            raw, error = self._call_in_thread(completions, args, kwargs)
            return self._finish(raw, error, n, kwargs)
        try:
            raw = self.fn(completions, *args, **kwargs)
            error = None
        except Exception as exc:  # noqa: BLE001 - the point of the wrapper
            raw, error = None, exc
        return self._finish(raw, error, n, kwargs)

    #: abandoned calls still running beyond which the reward is not called again (until one returns)
    MAX_ABANDONED = 4

    def _call_in_thread(self, completions, args, kwargs):
        running = self.abandoned_running
        if running >= self.MAX_ABANDONED:
            return None, RewardTimeout(f"{running} earlier calls are still running past reward_call_timeout_s="
                                       f"{self.call_timeout_s:g} s; not calling it again until one returns")
        box: dict = {}

        def target():
            try:
                box["value"] = self.fn(completions, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"rlattn-reward-{self.__name__}", daemon=True)
        thread.start()
        thread.join(self.call_timeout_s)
        if thread.is_alive():
            with self._lock:
                self._abandoned.append(thread)
                self.stats.timeouts += 1
                count = self.stats.timeouts
            error = RewardTimeout(f"did not return within reward_call_timeout_s={self.call_timeout_s:g} s "
                                  f"(the call is abandoned in its thread; {count} so far)")
            self._warn_timeout(error)
            return None, error
        if "error" in box:
            if not isinstance(box["error"], Exception):  # KeyboardInterrupt, SystemExit: not a reward failure
                raise box["error"]
            return None, box["error"]
        return box.get("value"), None

    def _warn_timeout(self, error: BaseException) -> None:
        with self._lock:
            first, self._warned_timeout = not self._warned_timeout, True
            self.stats.last_error = f"{type(error).__name__}: {error}"
            if self.stats.first_error is None:
                self.stats.first_error = self.stats.last_error
        if first:
            logger.warning("reward %r %s; every sample of such a call gets None (counted in rewards/%s/failed_frac "
                           "and .stats.timeouts). Raise reward_call_timeout_s if it is just slow, or fix it.",
                           self.__name__, error, self.__name__)
        else:
            logger.debug("reward %r %s", self.__name__, error)

    def _finish(self, raw, error: BaseException | None, n: int, kwargs: dict) -> list[float | None]:
        if error is None:
            try:
                raw = list(raw)
            except TypeError as exc:
                error = TypeError(f"returned {type(raw).__name__}, not a list")
                error.__cause__ = exc
        if error is None and len(raw) != n:
            error = ValueError(f"returned {len(raw)} values for {n} completions")
        if error is not None:
            values: list[float | None] = [None] * n
            failed = n
            if not isinstance(error, RewardTimeout):  # warned about on its own
                self._warn_once(f"raised {type(error).__name__}: {error}", error)
        else:
            values, failed = [], 0
            for value in raw:
                clean = _clean(value)
                if clean is _BAD:
                    failed += 1
                    values.append(None)
                    self._warn_once(f"returned {value!r} (not a finite number); scored as None")
                else:
                    values.append(clean)
        nones = sum(v is None for v in values)
        with self._lock:
            self.stats.calls += 1
            self.stats.samples += n
            self.stats.failed += failed
            self.stats.none += nones
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            try:
                log_metric(f"rewards/{self.__name__}/failed_frac", failed / n)
                log_metric(f"rewards/{self.__name__}/none_frac", nones / n)
            except Exception:  # noqa: BLE001 - logging must not break scoring
                logger.debug("log_metric failed", exc_info=True)
        self._check_streak(failed, n)
        return values

    def _check_streak(self, failed: int, n: int) -> None:
        if not self.max_failed_steps or not n:
            return
        with self._lock:
            self._failed_streak = self._failed_streak + 1 if failed / n >= self.max_failed_frac else 0
            streak = self._failed_streak
        if streak >= self.max_failed_steps:
            share = "every sample" if self.max_failed_frac >= 1 else f"at least {self.max_failed_frac:.0%} of its samples"
            raise RewardFailedError(
                f"reward {self.__name__!r} failed on {share} in {streak} consecutive calls (reward_max_failed_steps="
                f"{self.max_failed_steps}, reward_max_failed_frac={self.max_failed_frac:g}), so training on it learns "
                f"nothing; its first failure: {self.stats.first_error}. Fix the reward (the first warning has the "
                "traceback), or set reward_max_failed_steps: 0 to keep training with its samples scored None.")

    def _warn_once(self, what: str, exc: BaseException | None = None) -> None:
        with self._lock:
            self.stats.last_error = what
            if self.stats.first_error is None:
                self.stats.first_error = what
            first = not self._warned
            self._warned = True
        if first:
            logger.warning(
                "reward %r %s; those samples get None (counted in .stats.failed, further failures logged at debug level)",
                self.__name__,
                what,
                exc_info=exc,
            )
        else:
            logger.debug("reward %r %s", self.__name__, what, exc_info=exc)


class AsyncSafeReward(SafeReward):
    """:class:`SafeReward` for ``async`` reward functions (TRL awaits those on its event loop)."""

    async def __call__(self, completions, *args, **kwargs) -> list[float | None]:  # type: ignore[override]
        n = len(completions)
        try:
            if self.call_timeout_s is None:
                raw = await self.fn(completions, *args, **kwargs)
            else:
                raw = await asyncio.wait_for(self.fn(completions, *args, **kwargs), self.call_timeout_s)
            error = None
        except asyncio.TimeoutError:
            with self._lock:
                self.stats.timeouts += 1
                count = self.stats.timeouts
            raw, error = None, RewardTimeout(f"did not return within reward_call_timeout_s={self.call_timeout_s:g} s "
                                             f"(cancelled; {count} so far)")
            self._warn_timeout(error)
        except Exception as exc:  # noqa: BLE001
            raw, error = None, exc
        return self._finish(raw, error, n, kwargs)


class RewardTimeout(TimeoutError):
    """A reward call that did not return within its bound (its samples get None)."""


class RewardFailedError(RuntimeError):
    """A reward failed on (nearly) every sample for ``max_failed_steps`` consecutive calls: training stops."""


def bound_rewards(funcs, call_timeout_s: float | None = 300.0, max_failed_steps: int = 3,
                  max_failed_frac: float = 1.0) -> list[SafeReward]:
    """:meth:`SafeReward.bound` on every :class:`SafeReward` in ``funcs`` (reward models and other
    callables are left as they are); returns the bounded ones."""
    bounded = [f for f in funcs if isinstance(f, SafeReward)]
    for f in bounded:
        f.bound(call_timeout_s=call_timeout_s, max_failed_steps=max_failed_steps, max_failed_frac=max_failed_frac)
    return bounded


_BAD = object()


def _clean(value: Any):
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real) or hasattr(value, "__float__"):
        try:
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            return _BAD
        return out if math.isfinite(out) else _BAD
    return _BAD


def safe_reward(fn: RewardFn) -> SafeReward:
    """Wrap a reward so that exceptions and non-finite values become ``None`` and are counted.

    Idempotent (a wrapped reward is returned as is). The wrapper keeps ``__name__`` and exposes
    ``.stats`` (:class:`RewardStats`); ``async`` rewards stay ``async``.
    """
    if isinstance(fn, SafeReward):
        return fn
    call = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call):
        return AsyncSafeReward(fn)
    return SafeReward(fn)
