"""What each response token shows on the page, and the prompt as ids and as text.

The token ids are the truth, and only the model's own tokenizer knows how they map to text
(byte-level BPE, SentencePiece, added tokens), so every trace is decoded by its tokenizer. Not by
``decode([id])`` one token at a time: a character of several UTF-8 bytes (most CJK characters,
many emoji) is often split over several byte-level tokens, and each piece alone decodes to U+FFFD.
:func:`token_texts` decodes incrementally instead, as streaming detokenisers do: a token that only
starts a character shows its complete part (often "", drawn as ∅ on the page), the token that
completes it shows the character, and the texts join to the decoded response.
"""

from __future__ import annotations

from typing import Sequence

REPLACEMENT = "\ufffd"  # what a decoder makes of an incomplete UTF-8 sequence


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """The display text of each token of ``ids``; ``"".join`` of them is the decoded text.

    Each step decodes a short window: the last token that ended on a character boundary (context,
    so SentencePiece's word-initial space survives) plus the tokens since; the new token's text is
    what the window's text adds to what was already given out. A trailing U+FFFD (a character still
    incomplete) is held back until a later token completes it, or until the last token.
    """
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    decode = tokenizer.convert_tokens_to_string
    texts: list[str] = []
    ctx, given = 0, ""  # pieces[ctx:t] decode to text that starts with `given`, already given out
    for t in range(len(pieces)):
        text = decode(pieces[ctx : t + 1])
        held = t + 1 < len(pieces) and text.endswith(REPLACEMENT)
        if held:
            text = given + text[len(given) :].rstrip(REPLACEMENT)
        texts.append(text[len(given) :])
        if held:
            given = text
        else:  # a character boundary: this token is the next window's context
            ctx, given = t, decode(pieces[t : t + 1])
    return texts


def encode_prompt(tokenizer, prompt, chat: bool = True) -> list[int]:
    """Token ids of a prompt: a list of chat messages, or a string (wrapped as a user turn if chat)."""
    if isinstance(prompt, str):
        if chat and getattr(tokenizer, "chat_template", None):
            prompt = [{"role": "user", "content": prompt}]
        else:
            return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise ValueError(f"prompt must be a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}")
    out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(i) for i in out]


def prompt_text(prompt) -> str:
    """A prompt for the page header: a string as is, chat messages as ``[role] content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt)
