"""Helpers for tests and smoke runs: the tiny random models (re-exported from :mod:`rlattn.tiny`)
and a reward that varies on a random model.

Recipes and tests that need no hub build everything here; nothing in the library imports this module.
"""

from __future__ import annotations

from rlattn.tiny import ARCHS, TOKENIZERS, byte_tokenizer, task_tokenizer, tiny_config, tiny_model

__all__ = ["ARCHS", "TOKENIZERS", "byte_tokenizer", "digit_reward", "task_tokenizer", "tiny_config", "tiny_model"]


def digit_reward(completions, **kwargs):
    """A reward that varies on a random model from the first step: the share of digit characters
    plus a little length (so GRPO groups have non-zero advantages in smoke tests)."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else c
        out.append(sum(ch.isdigit() for ch in text) / max(1, len(text)) + 0.01 * len(text))
    return out
