"""Sampling responses for evaluation: batched, left-padded HF ``generate`` with the chat template.

Why it looks like this:

- Prompts come from rlattn's templates: a message list goes through the tokenizer's chat
  template (``add_generation_prompt=True``), a plain string is tokenized as is (base models).
  A batch is left-padded so every row's response starts at the same column.
- Sampling follows the protocol exactly: ``temperature`` and ``top_p`` from the config, top_k
  disabled (transformers' ``top_k=50`` default would silently change the distribution),
  greedy when ``temperature == 0``. Each batch is seeded from a string the caller passes
  (``seed``/model/dataset/first sample), so a rerun draws the same samples.
- A response ends at its first EOS token (any of the generation config's EOS ids, and the
  tokenizer's); its **length** is the number of tokens before it. A response with no EOS within
  ``max_new_tokens`` is **truncated** (the answer may be missing because the budget ran out,
  not because the model could not answer).
- ``backend: vllm`` is parsed but not built: :func:`check_backend` says so before any work.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Generation", "check_backend", "encode_prompts", "generate_batch", "seed_from"]


@dataclass(frozen=True)
class Generation:
    """One sampled response."""

    text: str
    length: int  # response tokens before the first EOS (max_new_tokens when truncated)
    truncated: bool  # no EOS within max_new_tokens


def check_backend(backend: str) -> None:
    """Raise a ``ValueError`` for a backend that cannot run here (``vllm`` is not built yet)."""
    if backend == "transformers":
        return
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "backend 'vllm' is not available yet: see README status (and vllm is not installed here). "
                "Use backend: transformers (--backend transformers), which runs the same protocol on CPU or GPU."
            )
        raise ValueError(
            "backend 'vllm' is not available yet: see README status (vllm is installed, but rlattn's vLLM "
            "evaluation backend is not built). Use backend: transformers (--backend transformers)."
        )
    raise ValueError(f"backend={backend!r} is not one of transformers, vllm")


def seed_from(*parts) -> int:
    """A 31-bit seed from any printable parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def encode_prompts(tokenizer, prompts: Sequence) -> list[str]:
    """Prompt texts: chat-templated for message lists, unchanged for plain strings."""
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt_template gives chat messages but this model's tokenizer has no chat template; "
                "use prompt_template: plain for base models"
            )
        texts.append(tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False))
    return texts


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def generate_batch(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[Generation]:
    """Sample one response per prompt (repeat a prompt to sample it several times)."""
    import torch

    texts = encode_prompts(tokenizer, prompts)
    has_template = any(not isinstance(p, str) for p in prompts)
    # Chat templates write their own special tokens; plain prompts get the tokenizer's (e.g. BOS).
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)  # [B, P]
    attention_mask = enc["attention_mask"].to(device)  # [B, P]
    eos = _eos_ids(model, tokenizer)
    sampling = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(eos),
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    new = out[:, input_ids.shape[1]:].tolist()  # [B, <= max_new_tokens]
    results = []
    for row in new:
        end = next((i for i, tok in enumerate(row) if tok in eos), None)
        tokens = row if end is None else row[:end]
        results.append(
            Generation(
                text=tokenizer.decode(tokens, skip_special_tokens=True),
                length=len(tokens),
                truncated=end is None and len(row) >= max_new_tokens,
            )
        )
    return results
