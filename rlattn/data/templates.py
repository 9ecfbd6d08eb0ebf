"""Prompt templates: how a problem statement becomes the ``prompt`` column TRL trains on.

A template is a function ``fn(problem: str) -> list[dict] | str``:

- a list of ``{"role", "content"}`` messages is TRL's *conversational* format (the tokenizer's chat
  template is applied by the trainer);
- a plain string is TRL's *standard* format (no chat template; meant for base models).

Every built-in template asks for the final answer inside ``\\boxed{}``, so one answer extractor
(the last non-empty ``\\boxed{}``) serves all of them, math and Countdown alike.

| name | format | what it is |
| --- | --- | --- |
| ``chat`` | messages | the paper's system prompt (:data:`SYSTEM_PROMPT`) + the problem as the user turn |
| ``plain`` | string | ``"{SYSTEM_PROMPT}\\n\\nQuestion: {problem}\\nAnswer:"`` for base models |
| ``r1`` | messages | DeepSeek-R1-Zero style ``<think>``/``<answer>`` system prompt + the problem |
| ``chat_example`` | messages | ``chat`` plus one worked example as a first user/assistant exchange (:data:`WORKED_EXAMPLE`): small chat models copy its shape, a short derivation ending in a filled ``\boxed{}`` |

Add one with :func:`register_template`; a dotted path ``"pkg.module:fn"`` passed as the template
name is the escape hatch for templates that live outside rlattn.
"""

from __future__ import annotations

import importlib
from typing import Callable, Union

Prompt = Union[list[dict[str, str]], str]
PromptTemplate = Callable[[str], Prompt]

#: The system prompt of the paper's analysis setup (arXiv 2510.13554, Sec. 4).
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

#: R1-Zero-style system prompt; the answer inside ``<answer>`` is still asked for in ``\boxed{}``.
R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>. "
    "Inside the <answer> tags, put the final answer within \\boxed{}."
)

#: The worked example of ``chat_example``: a two-step word problem, solved in one line per step.
WORKED_EXAMPLE = (
    "Anna has 4 bags of apples with 3 apples in each. Then she eats 2 apples. How many apples does Anna have now?",
    "Anna has 4 * 3 = 12 apples. After eating 2, she has 12 - 2 = 10 apples. The answer is \\boxed{10}.",
)

#: name -> template function. Fill it through :func:`register_template`, never by assignment.
PROMPT_TEMPLATES: dict[str, PromptTemplate] = {}


def register_template(name: str) -> Callable[[PromptTemplate], PromptTemplate]:
    """Decorator: register ``fn(problem) -> messages | str`` under ``name``.

    Raises ``ValueError`` if ``name`` is taken, so two templates can never shadow each other.
    """

    def decorator(fn: PromptTemplate) -> PromptTemplate:
        if name in PROMPT_TEMPLATES:
            raise ValueError(
                f"prompt template {name!r} is already registered "
                f"(by {PROMPT_TEMPLATES[name].__module__}.{PROMPT_TEMPLATES[name].__qualname__})"
            )
        PROMPT_TEMPLATES[name] = fn
        return fn

    return decorator


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    """Resolve a template name, a dotted path ``"pkg.module:fn"``, or a callable.

    Unknown names raise a ``ValueError`` that lists the registered ones.
    """
    if callable(template):
        return template
    if not isinstance(template, str):
        raise ValueError(
            f"template must be a name, a 'pkg.module:fn' path or a callable, got {template!r}"
        )
    if template in PROMPT_TEMPLATES:
        return PROMPT_TEMPLATES[template]
    if ":" in template:
        module_name, _, attr = template.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import prompt template {template!r}: {err}") from err
        if not callable(fn):
            raise ValueError(f"prompt template {template!r} is not callable")
        return fn
    raise ValueError(
        f"unknown prompt template {template!r}; valid: {', '.join(sorted(PROMPT_TEMPLATES))} "
        "(or a 'pkg.module:fn' path)"
    )


@register_template("chat")
def chat_template(problem: str) -> list[dict[str, str]]:
    """The paper's system prompt as a system message, the problem as the user message."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": problem},
    ]


@register_template("plain")
def plain_template(problem: str) -> str:
    """Plain text for base models (TRL's standard format): instruction, question, ``Answer:``."""
    return f"{SYSTEM_PROMPT}\n\nQuestion: {problem}\nAnswer:"


@register_template("r1")
def r1_template(problem: str) -> list[dict[str, str]]:
    """R1-Zero-style ``<think>``/``<answer>`` system prompt, the problem as the user message."""
    return [
        {"role": "system", "content": R1_SYSTEM_PROMPT},
        {"role": "user", "content": problem},
    ]


@register_template("chat_example")
def chat_example_template(problem: str) -> list[dict[str, str]]:
    """``chat`` with one worked example first. Why: the embedded 135M model answers the paper's
    prompt with empty or missing boxes (format ~0 %); after one example ~85 % of its answers are a
    short derivation ending in a filled box (docs/results.md), so a reward has something to grade."""
    question, answer = WORKED_EXAMPLE
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": problem},
    ]
