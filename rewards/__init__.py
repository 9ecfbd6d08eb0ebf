"""rlattn.rewards: reward functions for GRPO (one file per family) and their registry.

    from rlattn.rewards import get_reward_fn
    accuracy = get_reward_fn("accuracy", fallback_last_number=True)
    overlong = get_reward_fn("soft_overlong", max_completion_len=512, soft_punish_cache=64)
    mine = get_reward_fn("my_package.rewards:my_reward")
    trainer = GRPOTrainer(..., reward_funcs=[accuracy, overlong, mine])

Built-in rewards (YAML name -> factory):

| name | factory | score |
|---|---|---|
| ``accuracy`` | ``get_accuracy_reward(fallback_last_number=False, timeout=5.0, grader=None)`` | math-verify equivalence of the last non-empty ``\\boxed{}`` with ``solution``: 1 / 0 / None |
| ``format`` | ``get_format_reward(think=False)`` | 1 for a non-empty ``\\boxed{}`` (after ``</think>`` if ``think``), else 0 |
| ``soft_overlong`` | ``get_soft_overlong_reward(max_completion_len, soft_punish_cache)`` | DAPO length penalty in [-1, 0] from ``completion_ids`` |
| ``countdown`` | ``get_countdown_reward(format_score=0.0)`` | 1 when the equation uses ``nums`` once each and equals ``target`` |
| ``exact`` | ``get_exact_reward(case_sensitive=False)`` | 1 when the last non-empty ``\\boxed{}`` (else the first word, punctuation stripped) equals ``solution``, else 0; None without a solution |
| ``choice`` | ``get_choice_reward(case_sensitive=False)`` | 1 when the short answer (as for ``exact``) is one of the row's ``choices``, else 0: a format reward for multiple-choice toy tasks |

Contract (TRL's): ``fn(completions, **dataset_columns) -> list[float | None]``; ``None`` means
"cannot verify" and is left out of TRL's reward sum and logged means. Every reward from
:func:`get_reward_fn` is wrapped by :func:`safe_reward`: an exception or a NaN becomes ``None``
for the affected samples and is counted in ``fn.stats``. Metrics: TRL logs
``rewards/<name>/mean`` and ``rewards/<name>/std`` by each reward's ``__name__``; the wrapper
adds ``rewards/<name>/failed_frac`` and ``rewards/<name>/none_frac`` through TRL's
``log_metric`` hook.

Math grading runs in :class:`BoundedGrader` worker processes with a hard per-sample timeout
(math-verify's own ``signal.alarm`` timeouts are never used); see ``rewards/grader.py``.
"""

from .extract import completion_text, find_boxed, last_boxed, last_tag
from .grader import BoundedGrader, GradeLimits, close_default_grader, get_default_grader
from .registry import (
    REWARD_REGISTRY,
    RewardStats,
    SafeReward,
    get_reward_fn,
    get_reward_fns,
    register_reward,
    safe_reward,
)

# The built-in rewards register themselves with @register_reward in these modules; this import
# list is the one place that decides which ones exist.
from . import accuracy, countdown, exact, format, soft_overlong  # noqa: E402,F401  isort: skip
from .accuracy import get_accuracy_reward  # noqa: E402
from .countdown import get_countdown_reward  # noqa: E402
from .exact import get_choice_reward, get_exact_reward  # noqa: E402
from .format import get_format_reward  # noqa: E402
from .soft_overlong import get_soft_overlong_reward  # noqa: E402

__all__ = [
    "REWARD_REGISTRY",
    "BoundedGrader",
    "GradeLimits",
    "RewardStats",
    "SafeReward",
    "close_default_grader",
    "completion_text",
    "find_boxed",
    "get_accuracy_reward",
    "get_countdown_reward",
    "get_default_grader",
    "get_choice_reward",
    "get_exact_reward",
    "get_format_reward",
    "get_reward_fn",
    "get_reward_fns",
    "get_soft_overlong_reward",
    "last_boxed",
    "last_tag",
    "register_reward",
    "safe_reward",
]
