"""Tiny random models and in-code tokenizers: tests, smoke runs and toy tasks without a model hub.

Tests must never download anything, and should build a model in well under a second. This module
builds small Llama / Qwen2 / Qwen3 causal LMs from configs (GQA, eager or sdpa attention, Qwen3's
q/k norm), initialised deterministically from a seed, and tokenizers with a ChatML chat template
that need no files: bytes, or a BPE trained in code on the toy tasks' texts; or pass any tokenizer
object (e.g. the embedded model's, from ``rlattn.models.load_tokenizer``). :func:`tiny_model` is the one builder: ``rlattn.models``' ``tiny:<arch>...`` names call it
with the init std the name gives (HF's 0.02 by default), tests with its own default 0.2.

    model, tok = tiny_model("qwen3", attn_implementation="eager", seed=0)
"""

from __future__ import annotations

import torch

ARCHS = ("llama", "qwen2", "qwen3")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _chatml_tokenizer(core):
    """Wrap a ``tokenizers.Tokenizer`` with ChatML specials: eos = pad = <|im_end|>, as in
    SmolLM2-Instruct; left padding; the ChatML chat template."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and ChatML special tokens.

    Vocab: 256 byte tokens + <|endoftext|> + <|im_start|> + <|im_end|> = 259 ids.
    eos = pad = <|im_end|>, as in SmolLM2-Instruct.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return _chatml_tokenizer(core)


def _task_corpus() -> list[str]:
    """The texts of the synthetic tasks (rlattn.data.synthetic): both questions' words, the
    answers, ChatML's role lines, and enough key-lookup listings to merge ``What``/``digit``."""
    from rlattn.data.synthetic import KEY_LOOKUP_KEYS, QUADRANT_QUESTION, QUADRANTS, key_lookup_problem

    corpus = [f"<|im_start|>{role}\n" for role in ("system", "user", "assistant")]
    corpus += [QUADRANT_QUESTION] * 8 + list(QUADRANTS) * 8 + [str(d) for d in range(10)] * 8
    for i, key in enumerate(KEY_LOOKUP_KEYS):
        corpus.append(key_lookup_problem([(key, i % 10), (KEY_LOOKUP_KEYS[(i + 7) % 26], (3 * i) % 10)], key))
    return corpus


def task_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer whose merges make the synthetic tasks' words single tokens.

    Why: with one token per byte (:func:`byte_tokenizer`) the quadrant prompt is ~90 positions of
    text around 4-16 image tokens, and a tiny random LM, whose attention starts near uniform, sees
    the image through ~1/90 of each attention row. Word tokens cut the question from 60 positions
    to 19 (the whole 4-patch prompt from ~90 to 36) and make each answer (``tl``, ``br``, a digit)
    one token. Any other text still encodes (byte
    fallback: the base alphabet is all 256 bytes). Trained in code on :func:`_task_corpus`, no
    files; the same corpus always gives the same vocabulary. ChatML specials as in
    :func:`byte_tokenizer`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(_task_corpus(), trainer)
    return _chatml_tokenizer(core)


TOKENIZERS = ("bytes", "task")


def tiny_config(
    arch: str = "llama",
    *,
    vocab_size: int = 259,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int = 64,
    max_position_embeddings: int = 4096,
    attn_implementation: str = "eager",
    tie_word_embeddings: bool = True,
):
    """A small config of the given architecture. GQA when ``num_kv_heads < num_heads``."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not one of {ARCHS}")
    from transformers import AutoConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    if arch == "qwen3" and head_dim is None:
        kwargs["head_dim"] = hidden_size // num_heads
    config = AutoConfig.for_model(arch, **kwargs)
    config._attn_implementation = attn_implementation
    return config


def tiny_model(
    arch: str = "llama",
    *,
    seed: int = 0,
    attn_implementation: str = "eager",
    dtype: torch.dtype = torch.float32,
    tokenizer="bytes",
    init_std: float = 0.2,
    **config_kwargs,
):
    """Build ``(model, tokenizer)``: a tiny random causal LM, deterministic for a given seed.

    ``init_std`` is larger than HF's default 0.02 so that attention is not uniform: the attention
    statistics have something to measure.
    """
    from transformers import AutoModelForCausalLM

    if tokenizer == "bytes":
        tok = byte_tokenizer()
    elif tokenizer == "task":
        tok = task_tokenizer()
        config_kwargs.setdefault("vocab_size", len(tok))
    elif not isinstance(tokenizer, str):  # a tokenizer object: its vocabulary and special ids
        tok = tokenizer
        config_kwargs.setdefault("vocab_size", len(tok))
    else:
        raise ValueError(f"tokenizer={tokenizer!r} is not one of {TOKENIZERS} or a tokenizer object")
    config = tiny_config(arch, attn_implementation=attn_implementation, **config_kwargs)
    config.initializer_range = init_std
    # special token ids always come from the tokenizer
    config.eos_token_id = tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    config.bos_token_id = tok.bos_token_id
    saved_rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    finally:
        torch.random.set_rng_state(saved_rng)  # don't disturb the caller's global RNG
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.eval()
    return model, tok
