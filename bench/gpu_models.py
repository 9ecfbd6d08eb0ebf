"""Random Qwen3-shaped models for the GPU check (bench/gpu_check.sh), built from a config in code.

The lent GPU machine has no model hub, and a benchmark of attention statistics needs the real
model's *shapes* (layers, heads, head dim, hidden size), not its weights: timing and memory depend
on the shapes alone. Two shapes:

- ``qwen3-4b``: Qwen3-4B-Base (36 layers, 32 query / 8 KV heads, head_dim 128, hidden 2560). For
  the statistics benchmark the model is built only up to the last layer the statistics read
  (layer 24 of 36 by default): rlattn's pass stops there anyway, and the paper's way needs the maps
  of those layers only, so the layers above would be memory spent on nothing.
- ``qwen3-0.6b``: Qwen3-0.6B's decoder (28 layers, 16 / 8 heads, head_dim 128, hidden 1024), 0.44B
  parameters without the embedding, with a small vocabulary for an in-code tokenizer. The GPU
  trainer test and the credit-overhead measurement use it.

Build on ``device="meta"`` to check shapes at zero cost (tests/bench/test_gpu_check.py does).
"""

from __future__ import annotations

import torch

SHAPES = {
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     intermediate_size=9728, vocab_size=151936, max_position_embeddings=40960, rope_theta=1_000_000.0,
                     rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def stats_layers(shape: str, num_layers: int = 5) -> list[int]:
    """The layers rlattn reads by default on the full-depth model (12, 15, 18, 21, 24 for 36 layers)."""
    from rlattn.credit.attention_stats import default_layers

    return default_layers(SHAPES[shape]["num_hidden_layers"], num_layers)


def qwen3_config(shape: str, *, keep_layers: int | None = None, vocab_size: int | None = None,
                 attn_implementation: str = "sdpa", **overrides):
    """A ``Qwen3Config`` of the named shape; ``keep_layers`` truncates the decoder to its first layers."""
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not one of {sorted(SHAPES)}")
    from transformers import Qwen3Config

    kwargs = dict(SHAPES[shape], **overrides)
    if keep_layers is not None:
        if not 1 <= keep_layers <= kwargs["num_hidden_layers"]:
            raise ValueError(f"keep_layers={keep_layers} must be in 1..{kwargs['num_hidden_layers']} for {shape}")
        kwargs["num_hidden_layers"] = keep_layers
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    config = Qwen3Config(**kwargs)
    config._attn_implementation = attn_implementation
    return config


def build_model(config, *, device="cuda", dtype=torch.bfloat16, seed: int = 0, init_std: float = 0.02):
    """A randomly initialised causal LM on ``device`` (weights drawn there: no host copy of a 4B model)."""
    from transformers import AutoModelForCausalLM

    config.initializer_range = init_std
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=config._attn_implementation)
    return model.eval()


def truncated_stats_model(shape: str = "qwen3-4b", *, device="cuda", dtype=torch.bfloat16, attn_implementation="sdpa"):
    """``(model, layers)``: the shape's decoder up to its last statistics layer, and those layers."""
    layers = stats_layers(shape)
    config = qwen3_config(shape, keep_layers=max(layers) + 1, attn_implementation=attn_implementation)
    return build_model(config, device=device, dtype=dtype), layers


def policy_model(tokenizer, *, device="cuda", dtype=torch.bfloat16, seed: int = 0, init_std: float = 0.2):
    """The ~0.5B Qwen3-0.6B-shaped policy with the tokenizer's vocabulary and special tokens.

    ``init_std`` 0.2 as in rlattn.testing, so that attention is not uniform and credit has something
    to select.
    """
    config = qwen3_config("qwen3-0.6b", vocab_size=len(tokenizer))
    config.eos_token_id, config.pad_token_id, config.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    model = build_model(config, device=device, dtype=dtype, seed=seed, init_std=init_std)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def set_attn_implementation(model, impl: str) -> None:
    """Switch between eager (which can return attention maps) and sdpa on a built model."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # older transformers: the attention modules read the config at call time
        model.config._attn_implementation = impl


def count_parameters(model, *, embeddings: bool = False) -> int:
    skip = set() if embeddings else {id(p) for p in model.get_input_embeddings().parameters()}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in skip:
            seen.add(id(p))
            total += p.numel()
    return total
