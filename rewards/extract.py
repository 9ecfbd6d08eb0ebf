"""Answer extraction shared by the rewards: completion text, ``\\boxed{}`` answers, tags.

Why a module of its own: every reward has to agree on what "the model's answer" is. Rewards get
``completions`` the way TRL passes them (plain strings, or for conversational prompts a list of
``{"role", "content"}`` messages), and the math templates ask for the final answer inside
``\\boxed{}``. The rules here:

- :func:`completion_text`: a string as is; a message list -> the content of its last
  ``assistant`` message (content given as a list of parts -> its text parts joined).
- :func:`last_boxed`: the content of the last *non-empty* ``\\boxed{...}`` / ``\\fbox{...}``,
  brace-matched in one linear pass (nested braces, escaped ``\\{``/``\\}``, ``\\boxed {x}`` with
  a space and the brace-less ``\\boxed 5`` form are handled; an unclosed box is ignored; a box
  wrapped around a box is unwrapped). Linear time whatever the input, so a completion made of
  100k opening braces costs milliseconds, not a hang.
- :func:`last_tag`: the content of the last ``<tag>...</tag>`` pair.
- :func:`last_number`: the last plain number (integer, decimal or simple fraction ``a/b``) in
  the text, with the commas of digit groups removed (``1,234.5`` -> ``1234.5``). It is what the
  lenient accuracy reward grades when a completion has no box, so the graded answer is a string
  the caller holds (and can store, vote with and show). One regex pass, no backtracking into a
  digit run: linear time, so 100k digits or 100k parentheses cost milliseconds.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["completion_text", "find_boxed", "last_boxed", "last_number", "last_tag"]

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# After a brace-less ``\boxed``: one token, e.g. ``\boxed 5`` or ``\boxed -3.5``.
_BARE_TOKEN = re.compile(r"[ \t]+([^\s$]+)")
# A plain number: an optional sign (not after a word, number or closing bracket: "5-3" is two
# numbers, "x = -3" is one), digits with optional ",ddd" groups, an optional ".ddd" part, and an
# optional "/denominator". Everything after the first digit run is optional, so a match never
# backtracks into it (linear time). A trailing "." is not part of a number ("7." -> "7").
_DIGITS = r"\d+(?:,\d{3}(?!\d))*"
_NUMBER = re.compile(rf"(?:(?<![\w)\]}}])-)?{_DIGITS}(?:\.\d+)?(?:/{_DIGITS}(?!\.\d))?")


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it (string or list of chat messages)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a single message
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        for message in reversed(messages):
            if message.get("role") == "assistant":
                return _content_text(message.get("content"))
        # No role given: the last message is the model's.
        return _content_text(messages[-1].get("content")) if messages else ""
    raise TypeError(
        f"a completion must be a string or a list of {{'role', 'content'}} messages, got {type(completion).__name__}"
    )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # multimodal content parts
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _scan_boxes(text: str) -> list[tuple[int, int, int, int]]:
    """Every closed box as ``(command_start, end, content_start, content_end)``, by ``end``.

    One pass over the text: braces are tracked on a stack, and the opening braces that belong
    to a box command are remembered, so nested braces and nested boxes cost nothing extra.
    """
    boxes: list[tuple[int, int, int, int]] = []
    box_open: dict[int, int] = {}  # index of a box's "{" -> where its command starts
    for match in _BOX_COMMAND.finditer(text):
        pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == "{":
            box_open[pos] = match.start()
        else:
            bare = _BARE_TOKEN.match(text, match.end())
            if bare is not None:
                boxes.append((match.start(), bare.end(), bare.start(1), bare.end(1)))
    if box_open:
        stack: list[int] = []  # indices of unmatched "{"
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
                continue
            if ch == "{":
                stack.append(i)
            elif ch == "}" and stack:
                opened = stack.pop()
                start = box_open.get(opened)
                if start is not None:
                    boxes.append((start, i + 1, opened + 1, i))
            i += 1
    boxes.sort(key=lambda b: b[1])
    return boxes


def find_boxed(text: str) -> list[tuple[int, int, str]]:
    """Every closed ``\\boxed``/``\\fbox`` in ``text`` as ``(start, end, content)``, by end position.

    ``start`` is where the command starts, ``end`` one past its closing brace. Nested boxes are
    all reported (the inner one first, as it closes first). Linear time.
    """
    return [(start, end, text[cs:ce]) for start, end, cs, ce in _scan_boxes(text)]


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed{}`` (stripped), or None when there is none.

    "Last" is by closing position, so an outer box always wins over a box nested inside it;
    ``\\boxed{\\boxed{3}}`` is unwrapped to ``3``.
    """
    boxes = _scan_boxes(text)
    by_span = {(b[0], b[1]): b for b in boxes}
    for box in reversed(boxes):
        cs, ce = _strip_span(text, box[2], box[3])
        if cs == ce:
            continue
        # Unwrap a box whose whole content is another box, using the spans already found.
        inner = by_span.get((cs, ce))
        while inner is not None and cs < ce:
            cs, ce = _strip_span(text, inner[2], inner[3])
            inner = by_span.get((cs, ce))
        if cs < ce:  # \boxed{\boxed{}} is as empty as \boxed{}
            return text[cs:ce]
    return None


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def last_number(text: str) -> str | None:
    """The last plain number in ``text`` (commas between digit groups removed), or None.

    ``"so 3 + 4 = 7."`` -> ``"7"``; ``"1,234 apples"`` -> ``"1234"``; ``"x = -2.5"`` -> ``"-2.5"``;
    ``"3/4 of it"`` -> ``"3/4"``; ``"5-3"`` -> ``"3"`` (a minus after a digit is not a sign).
    LaTeX is not parsed: ``\\frac{1}{2}`` reads as ``"2"`` (a box is the way to give such answers).
    """
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else last.group(0).replace(",", "")


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>...</tag>`` pair in ``text`` (not stripped), or None."""
    close = f"</{tag}>"
    end = text.rfind(close)
    if end < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, end)
    if start < 0:
        return None
    return text[start + len(tag) + 2 : end]
