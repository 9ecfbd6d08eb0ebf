"""Capture post-RoPE queries and keys of chosen layers during a normal forward pass.

The attention statistics (WAAD, FAI, head spans) need each selected layer's attention
probabilities, which fused kernels (sdpa, FlashAttention) never materialise. Instead of running a
second, eager model with ``output_attentions=True`` (the paper's way), we intercept the call that
every transformers attention module makes into ``ALL_ATTENTION_FUNCTIONS``: at that point the
module has already applied its projections, q/k norms (Qwen3) and RoPE, so ``query`` [B, H, N, D]
and ``key`` [B, KV, N, D] are exactly what the model's own softmax sees. A callback receives them;
the model's real attention then runs unchanged (so later layers see the same hidden states).

After the last selected layer the forward is aborted with an internal exception: the remaining
layers, the final norm, the LM head and the logits are never computed.

The interception is installed for the duration of a ``with`` block by putting a wrapper into the
registry's per-instance mapping under the model's current implementation name, and restoring the
previous entry afterwards. Captures nest: the innermost open capture owns every attention call made
while it is open and falls back to the real attention function, never to an outer capture. So a
model that runs internal passes of its own before its main one (a wrapper that selects the
states it reads by attention) opens its own capture around them, and an outer capture (the trainer's
statistics) sees only the main pass. Models whose selected layers never call the registry (e.g. a non-softmax
or custom attention layer) get a clear error naming the layer.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

# Glossary: B batch, N sequence length, H query heads, KV key/value heads, D head dim.
QKCallback = Callable[[int, torch.Tensor, torch.Tensor, float], None]

_UNSUPPORTED_KWARGS = {
    "softcap": "logit soft-capping",
    "sliding_window": "sliding-window attention",
    "s_aux": "attention sinks",
}


class StopForward(Exception):
    """Raised inside the forward after the last selected layer; caught by ``capture_qk``."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP/accelerate and PEFT wrappers to the transformers ``PreTrainedModel``."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP / DeepSpeed
            model = model.module
            continue
        if hasattr(model, "get_base_model") and callable(model.get_base_model):  # PEFT
            model = model.get_base_model()
            continue
    return model


def attention_modules(model: torch.nn.Module) -> dict[int, tuple[str, torch.nn.Module]]:
    """Map decoder layer index -> (qualified name, attention module) for a transformers model."""
    base = unwrap_model(model)
    found: dict[int, tuple[str, torch.nn.Module]] = {}
    for name, module in base.named_modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and hasattr(module, "config") and name.split(".")[-1] in ("self_attn", "attn", "attention"):
            found.setdefault(idx, (name, module))
    return found


def num_hidden_layers(model: torch.nn.Module) -> int:
    config = unwrap_model(model).config
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers)


def _attention_chunk(module: torch.nn.Module, layer: int) -> int | None:
    """``attention_chunk_size`` if ``layer`` is a chunked-attention layer (Llama 4: a query sees only
    the keys of its own block of that many positions), else None. The chunks live in the attention
    mask alone, so the attention function's arguments do not show them."""
    config = getattr(module, "config", None)
    types = getattr(config, "layer_types", None)
    if not types or layer >= len(types) or types[layer] != "chunked_attention":
        return None
    return getattr(config, "attention_chunk_size", None)


def _registry():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


@contextmanager
def capture_qk(model: torch.nn.Module, layers: list[int], callback: QKCallback, stop_after_last: bool = True) -> Iterator[set]:
    """Within the block, every forward of ``model`` calls ``callback(layer, q, k, scaling)``.

    ``q`` is [B, H, N, D] and ``k`` is [B, KV, N, D] (post-RoPE, before GQA repetition), in the
    model's dtype. With ``stop_after_last`` the forward raises :class:`StopForward` right after the
    last selected layer; use :func:`run_captured` to make the call. Yields the set of captured
    layer indices (filled during the forward).
    """
    base = unwrap_model(model)
    modules = attention_modules(base)
    missing = [l for l in layers if l not in modules]
    if missing:
        raise ValueError(
            f"layers {missing} have no softmax attention module that rlattn can capture in "
            f"{type(base).__name__} (found attention modules for layers {sorted(modules)[:8]}...)"
        )
    targets = {id(modules[l][1]): l for l in layers}
    chunks = {l: _attention_chunk(modules[l][1], l) for l in layers}
    last = max(layers)
    # the attention modules look themselves up under their own config's implementation name
    impl = getattr(modules[layers[0]][1].config, "_attn_implementation", None) or "eager"
    registry = _registry()
    previous_local = registry._local_mapping.get(impl)
    captured: set = set()
    # the real attention function under any capture that is open already (innermost capture wins)
    underlying = getattr(previous_local, "_rlattn_underlying", previous_local)

    def fallback(module):
        if underlying is not None:
            return underlying
        if impl in registry._global_mapping:
            return registry._global_mapping[impl]
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise ValueError(f"cannot find the eager attention function of {type(module).__name__}")
        return eager

    def wrapper(module, query, key, value, attention_mask, *args, **kwargs):
        layer = targets.get(id(module))
        if layer is not None:
            for kw, what in _UNSUPPORTED_KWARGS.items():
                if kw == "sliding_window" and kwargs.get(kw) is not None and query.shape[2] <= kwargs[kw]:
                    continue  # every sequence fits inside the window: plain causal softmax
                if kwargs.get(kw) is not None:
                    raise ValueError(
                        f"layer {layer} ({modules[layer][0]}) uses {what} ({kw}={kwargs[kw]!r}); "
                        "rlattn's attention statistics support plain causal softmax attention only"
                    )
            chunk = chunks[layer]
            if chunk is not None and query.shape[2] > chunk:  # within one chunk it is plain causal softmax
                raise ValueError(
                    f"layer {layer} ({modules[layer][0]}) uses chunked attention (attention_chunk_size={chunk}) and this "
                    f"sequence has {query.shape[2]} positions; rlattn's attention statistics support plain causal "
                    "softmax attention only"
                )
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
            callback(layer, query, key, float(scaling))
            captured.add(layer)
            if stop_after_last and layer == last:
                raise StopForward
        return fallback(module)(module, query, key, value, attention_mask, *args, **kwargs)

    wrapper._rlattn_underlying = underlying
    registry[impl] = wrapper
    try:
        yield captured
    finally:
        if previous_local is not None:
            registry[impl] = previous_local
        else:
            registry._local_mapping.pop(impl, None)


def run_captured(model, layers, callback, stop_after_last: bool = True, **forward_kwargs) -> None:
    """Run ``model(**forward_kwargs)`` under :func:`capture_qk`, checking every layer was seen."""
    with capture_qk(model, layers, callback, stop_after_last=stop_after_last) as captured:
        try:
            model(**forward_kwargs)
        except StopForward:
            pass
    not_seen = sorted(set(layers) - captured)
    if not_seen:
        names = attention_modules(model)
        raise ValueError(
            "attention of layers "
            + ", ".join(f"{l} ({names[l][0]})" for l in not_seen)
            + " was not captured: the layer does not call transformers' attention-function registry "
            "(a non-softmax or custom attention layer?); choose other layers with AttentionStatsConfig(layers=...)"
        )
