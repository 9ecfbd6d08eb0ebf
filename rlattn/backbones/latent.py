"""CoCoVa-lite: a causal LM that thinks in K latent vectors before it writes (optional backbone).

What: :class:`LatentPolicy` wraps any causal LM (PEFT or not) as a ``PreTrainedModel``. The prompt
ends with ``<bot> <lat>×K <eot>``; ``<lat>`` and ``<img>`` are real placeholder token ids (the
Coconut trick), so positions, masks and TRL's prompt/completion split stay standard. The wrapper
swaps projected patch embeddings in at ``<img>`` and the latent ``z_k`` in at the k-th ``<lat>``:

    [<img>×P] prompt <bot> <lat>×K <eot> completion

Each ``z_k`` is refined from ``z_{k-1}`` (``z_0`` = the ``<lat>`` embedding) by
:class:`LQFormerLite`, a gated cross-attention block over context states:

- ``mode="cocova"`` (K+1 LM passes, as CoCoVa/Coconut): pass k runs the LM over the prefix up to
  the slot before ``<lat>_k``; :class:`TokenSelector` reads that position's attention (chosen
  layers, heads averaged, sinks dropped: :mod:`rlattn.credit.aggregation`, the same code the
  credit diagnostics use) and keeps the top ``select_k`` image columns (prompt-text columns when
  there is no image); the LQ-Former fuses their hidden states and the position's own state into
  ``z_k``. Then one final pass over the whole sequence gives the logits.
- ``mode="fast"`` (one LM pass): the LQ-Former iterates K times over the input embeddings of the
  candidate columns (the image patches, else the prompt text), then the single LM pass gives the
  logits.

Why GRPO stays exact: ``z = f_θ(prompt)`` is deterministic (no dropout in the latent path), so
``log π(y|x) = Σ_t log p(y_t | x, z(x), y_<t)``; ``generate`` and ``forward`` compute the same
latents, and TRL's old/ref log-prob passes just call ``forward``. Opt-in ``noise_std`` = σ > 0
makes the latents part of the action: rollouts read z̃ ~ N(z_θ, σ²I), later passes re-read that
z̃ (:meth:`LatentPolicy.using_sampled_latents`) and the log-prob adds ``log N(z̃; z_θ, σ²I)``
(``last_latent_logp``; the trainer puts it on the first completion token). Gates start at 0
(``tanh(0) = 0``), so at init ``z_k = embed(<lat>)`` and the wrapper *is* the base LM with K pause
tokens; ``freeze_gates=True`` keeps it that way (the placeholder-only ablation). This is a small,
honest approximation of CoCoVa (arXiv 2511.02360, no public code), not a reproduction: no
InfoNCE/diffusion objectives, no adaptive K, no KV cache across latent passes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from rlattn.credit.aggregation import attention_rows, drop_columns, sink_mask
from rlattn.credit.capture import capture_qk, num_hidden_layers

# Glossary: B batch, N sequence length, D LM hidden size, K latents, P image patches, M memory slots.

TYPE_PROMPT, TYPE_IMAGE, TYPE_LATENT, TYPE_SPECIAL, TYPE_COMPLETION = range(5)
TYPE_NAMES = ("prompt", "image", "latent", "special", "completion")
IMAGE_TOKEN, BOT_TOKEN, LATENT_TOKEN, EOT_TOKEN = "<img>", "<bot>", "<lat>", "<eot>"
BACKBONE_TOKENS = (IMAGE_TOKEN, BOT_TOKEN, LATENT_TOKEN, EOT_TOKEN)
MODES = ("cocova", "fast")


def add_backbone_tokens(tokenizer) -> dict[str, int]:
    """Add ``<img> <bot> <lat> <eot>`` as special tokens (if missing); return their ids by name."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in BACKBONE_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = {name: tokenizer.convert_tokens_to_ids(t) for name, t in
           (("image", IMAGE_TOKEN), ("bot", BOT_TOKEN), ("latent", LATENT_TOKEN), ("eot", EOT_TOKEN))}
    for t in BACKBONE_TOKENS:  # one id per placeholder, or the layout below cannot be found
        enc = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"the tokenizer splits {t!r} into {len(enc)} ids; it must be a single special token")
    return ids


@dataclass
class LatentConfig:
    """Settings of the latent path (``latent_*`` keys in recipes)."""

    num_latents: int = 2  # K
    mode: str = "cocova"  # cocova (K+1 passes, re-selection) | fast (one pass)
    select_k: int = 4  # states the TokenSelector keeps per step (cocova)
    select_layers: list[int] | None = None  # layers whose attention selects; default: the last third
    num_sinks: int = 1  # first real tokens dropped before selection
    lqformer_blocks: int = 1
    lqformer_heads: int = 4
    freeze_gates: bool = False  # gates fixed at 0: placeholder-only (pause-token) ablation
    gate_scale: float = 1.0  # gates are tanh(gate_scale·α): multiplies the gates' effective learning rate
    image_size: int = 0  # 0: text only; else square images of this side
    patch_size: int = 8
    vision_dim: int = 64
    projector_hidden: int | None = None  # None: linear projector; else a 2-layer MLP
    noise_std: float = 0.0  # σ > 0: sampled rollouts use z̃ ~ N(z, σ²I) and the log-prob adds log N(z̃; z, σ²)

    def __post_init__(self):
        def bad(key, value, allowed):
            raise ValueError(f"latent_{key}={value!r} is invalid: {allowed}")

        if not (isinstance(self.num_latents, int) and 1 <= self.num_latents <= 64):
            bad("num_latents", self.num_latents, "an int in [1, 64]")
        if self.mode not in MODES:
            bad("mode", self.mode, f"one of {MODES}")
        if self.select_k < 1:
            bad("select_k", self.select_k, "an int >= 1")
        if self.num_sinks < 0:
            bad("num_sinks", self.num_sinks, "an int >= 0")
        if self.lqformer_blocks < 1 or self.lqformer_heads < 1:
            bad("lqformer_blocks/heads", (self.lqformer_blocks, self.lqformer_heads), "ints >= 1")
        if not self.gate_scale > 0:
            bad("gate_scale", self.gate_scale, "a number > 0")
        if not (isinstance(self.noise_std, (int, float)) and 0 <= self.noise_std < float("inf")):
            bad("noise", self.noise_std, "a number >= 0 (0: deterministic latents)")
        if self.image_size < 0 or (self.image_size and self.image_size % self.patch_size):
            bad("image_size", self.image_size, f"0 (text only) or a multiple of latent_patch_size={self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2 if self.image_size else 0


class LatentPolicyConfig(PretrainedConfig):
    """Config of :class:`LatentPolicy`: the wrapped LM's config plus the latent settings and token ids."""

    model_type = "rlattn_latent_policy"
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, text_config=None, latent: dict | None = None, token_ids: dict | None = None,
                 base_model_name_or_path: str | None = None, **kwargs):
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.latent = dict(latent or {})
        self.token_ids = dict(token_ids or {})
        self.base_model_name_or_path = base_model_name_or_path
        self.image_token_id = self.token_ids.get("image")  # TRL suppresses it during sampling
        super().__init__(**kwargs)
        if text_config is not None:  # what TRL and transformers read off model.config
            self.vocab_size = text_config.vocab_size
            self.hidden_size = text_config.hidden_size
            self.num_hidden_layers = text_config.num_hidden_layers
            self.tie_word_embeddings = False  # the wrapper itself ties nothing


class TokenSelector:
    """CoCoVa's dynamic token selection: the top-``k`` candidate columns by one row's attention.

    ``weights`` [B, N]: the current position's attention, averaged over chosen layers and heads.
    ``candidates`` bool [B, N]: columns that may be picked (image, or prompt text); ``sinks`` bool
    [B, N]: columns dropped first (then the rest is renormalised). Returns ``(index [B, k'],
    valid [B, k'])``, ``k' = min(k, N)``; ``valid`` is False where a row has fewer candidates.
    Ties go to the earlier column.
    """

    def __init__(self, k: int, num_sinks: int = 1):
        self.k, self.num_sinks = k, num_sinks

    def __call__(self, weights: torch.Tensor, candidates: torch.Tensor, sinks: torch.Tensor | None = None):
        w = weights.float()[:, None]  # [B, 1, N]
        drop = ~candidates.bool()
        if sinks is not None:
            drop = drop | sinks.bool()
        w = drop_columns(w, drop)[:, 0]  # [B, N]
        k = min(self.k, w.shape[1])
        score = torch.where(drop, torch.full_like(w, -1.0), w)  # dropped columns sort last
        idx = score.sort(dim=-1, descending=True, stable=True).indices[:, :k]  # [B, k]; ties: earlier column
        valid = ~drop.gather(1, idx)  # [B, k]
        return idx, valid


class _GatedBlock(nn.Module):
    def __init__(self, dim: int, heads: int, gate_scale: float = 1.0):
        super().__init__()
        self.gate_scale = float(gate_scale)
        self.ln_q, self.ln_kv, self.ln_f = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.xattn = nn.MultiheadAttention(dim, heads, batch_first=True, dropout=0.0)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.alpha = nn.Parameter(torch.zeros(1))  # gate of the cross-attention, tanh(0) = 0
        self.beta = nn.Parameter(torch.zeros(1))  # gate of the FFN

    def forward(self, z, mem, mem_mask, step_emb):
        kv = self.ln_kv(mem)  # [B, M, D]
        a, w = self.xattn(self.ln_q(z) + step_emb, kv, kv, key_padding_mask=~mem_mask, need_weights=True)  # [B, 1, D]
        z = z + torch.tanh(self.gate_scale * self.alpha) * a
        z = z + torch.tanh(self.gate_scale * self.beta) * self.ffn(self.ln_f(z))
        return z, w  # w: [B, 1, M] cross-attention weights (heads averaged)


class LQFormerLite(nn.Module):
    """``z ← z + tanh(α)·XAttn(z + e_step, mem)``, ``z ← z + tanh(β)·FFN(z)``, per block; α = β = 0 at init."""

    def __init__(self, dim: int, heads: int = 4, blocks: int = 1, max_steps: int = 64, freeze_gates: bool = False,
                 gate_scale: float = 1.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"latent_lqformer_heads={heads} must divide the LM hidden size {dim}")
        self.blocks = nn.ModuleList(_GatedBlock(dim, heads, gate_scale) for _ in range(blocks))
        self.step_embed = nn.Embedding(max_steps, dim)
        nn.init.normal_(self.step_embed.weight, std=0.02)
        if freeze_gates:
            for b in self.blocks:
                b.alpha.requires_grad_(False)
                b.beta.requires_grad_(False)
        self.last_attention: torch.Tensor | None = None

    def forward(self, z: torch.Tensor, mem: torch.Tensor, mem_mask: torch.Tensor, step: int) -> torch.Tensor:
        """z [B, 1, D], mem [B, M, D], mem_mask bool [B, M] (a row needs at least one True)."""
        e = self.step_embed.weight[step][None, None]  # [1, 1, D]
        for block in self.blocks:
            z, w = block(z, mem, mem_mask, e)
        self.last_attention = w.detach()
        return z

    def gates(self) -> dict[str, float]:
        return {f"block{i}/{g}": float(torch.tanh(b.gate_scale * getattr(b, g)).item())
                for i, b in enumerate(self.blocks) for g in ("alpha", "beta")}


def _default_select_layers(total: int) -> list[int]:
    """The last third of the layers (at least one): deeper layers carry the task-specific routing."""
    start = min(total - 1, (2 * total) // 3)
    return list(range(start, total))


class LatentPolicy(PreTrainedModel):
    """A causal LM with K latent thought vectors (and optionally image patches) in its prompt.

        tok = AutoTokenizer.from_pretrained(path); lm = AutoModelForCausalLM.from_pretrained(path)
        policy = LatentPolicy.from_lm(lm, tok, LatentConfig(num_latents=2, mode="cocova"))
        out = policy(input_ids, attention_mask, pixel_values=...)   # CausalLMOutput, logits 1:1 with ids
        seqs = policy.generate(input_ids, attention_mask, max_new_tokens=8)  # prompt + new tokens

    ``forward`` returns a normal ``CausalLMOutputWithPast`` so TRL's per-token log-prob code works
    unchanged. Build it with :meth:`from_lm`; apply LoRA with :func:`apply_lora` (LQ-Former,
    encoder and projector stay trainable).
    """

    config_class = LatentPolicyConfig
    base_model_prefix = "lm"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True  # delegated to the wrapped LM's layers

    def __init__(self, config: LatentPolicyConfig, lm: nn.Module | None = None):
        super().__init__(config)
        self.lm = lm if lm is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.latent_config = LatentConfig(**config.latent)
        lc = self.latent_config
        dim = config.text_config.hidden_size
        self.lqformer = LQFormerLite(dim, lc.lqformer_heads, lc.lqformer_blocks, freeze_gates=lc.freeze_gates,
                                     gate_scale=lc.gate_scale)
        if lc.image_size:
            from .vision import Projector, TinyPatchEncoder

            self.encoder = TinyPatchEncoder(image_size=lc.image_size, patch_size=lc.patch_size, embed_dim=lc.vision_dim)
            self.projector = Projector(lc.vision_dim, dim, lc.projector_hidden)
            # patches enter at the scale of the LM's token embeddings: LayerNorm, then one learned gain
            self.image_norm = nn.LayerNorm(dim, elementwise_affine=False)
            self.image_scale = nn.Parameter(torch.ones(1))
        else:
            self.encoder = self.projector = self.image_norm = self.image_scale = None
        self.selector = TokenSelector(lc.select_k, lc.num_sinks)
        total = config.text_config.num_hidden_layers
        self.select_layers = list(lc.select_layers) if lc.select_layers else _default_select_layers(total)
        if any(not 0 <= l < total for l in self.select_layers):
            raise ValueError(f"latent_select_layers={self.select_layers} must lie in [0, {total})")
        self.generation_config = getattr(self.lm, "generation_config", None)
        self.last_latent_info: dict = {}
        # latent noise (noise_std > 0): what generate() sampled, and what the next pass must reuse
        self._draw_noise = False
        self._sampled: torch.Tensor | None = None
        self.last_sampled_latents: torch.Tensor | None = None  # [B, K, D] from the last sampling generate()
        self.last_latent_logp: torch.Tensor | None = None  # [B] log N(z̃; z_θ, σ²I) of the last pass given z̃

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_lm(cls, lm: nn.Module, tokenizer, latent: LatentConfig | dict | None = None) -> "LatentPolicy":
        """Wrap ``lm`` (a transformers causal LM, before LoRA): adds the placeholder tokens to
        ``tokenizer`` and resizes ``lm``'s embeddings to fit them."""
        latent = latent if isinstance(latent, LatentConfig) else LatentConfig(**(latent or {}))
        ids = add_backbone_tokens(tokenizer)
        if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
            # new rows at the mean of the old ones: placeholders start as an "average" token
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        text_config = lm.config
        config = LatentPolicyConfig(text_config=text_config, latent=asdict(latent), token_ids=ids,
                                    base_model_name_or_path=getattr(text_config, "_name_or_path", None))
        config._attn_implementation = getattr(text_config, "_attn_implementation", None) or "eager"
        policy = cls(config, lm=lm)
        if policy.image_scale is not None:
            with torch.no_grad():  # per-element RMS of the token embeddings
                policy.image_scale.fill_(float(lm.get_input_embeddings().weight.float().pow(2).mean().sqrt()))
        policy.float_latent_modules()
        return policy

    def float_latent_modules(self):
        """LQ-Former, encoder, projector and image gain in fp32 (small; outputs are cast to the LM's dtype)."""
        for m in (self.lqformer, self.encoder, self.projector, self.image_norm):
            if m is not None:
                m.float()
        if self.image_scale is not None:
            self.image_scale.data = self.image_scale.data.float()

    def _init_weights(self, module):  # the wrapped LM is initialised already; ours init themselves
        pass

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    # ---------------------------------------------------------------- layout

    @property
    def token_ids(self) -> dict[str, int]:
        return self.config.token_ids

    def type_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 prompt_length: int | None = None, latent_columns: list[int] | None = None) -> torch.Tensor:
        """long [B, N]: TYPE_PROMPT / IMAGE / LATENT / SPECIAL (``<bot>``, ``<eot>``) / COMPLETION
        (columns >= ``prompt_length``); padding gets -1."""
        t = torch.full_like(input_ids, TYPE_PROMPT)
        img = input_ids == self.token_ids["image"]
        if self.latent_config.num_patches:
            img = img & (img.long().cumsum(1) <= self.latent_config.num_patches)
        t[img] = TYPE_IMAGE
        cols = self._latent_columns(input_ids) if latent_columns is None else latent_columns
        if cols:
            t[:, cols] = TYPE_LATENT
        t[(input_ids == self.token_ids["bot"]) | (input_ids == self.token_ids["eot"])] = TYPE_SPECIAL
        if prompt_length is not None:
            t[:, prompt_length:] = TYPE_COMPLETION
        if attention_mask is not None:
            t[~attention_mask.bool()] = -1
        return t

    def _latent_columns(self, input_ids: torch.Tensor) -> list[int] | None:
        """Columns of the K latent slots: the K tokens after each row's *first* ``<bot>`` (a
        placeholder id sampled later, in a completion, is an ordinary token). Left-padded prompts
        put them at the same columns in every row."""
        bot = input_ids == self.token_ids["bot"]  # [B, N]
        if not bot.any():
            if bool((input_ids == self.token_ids["latent"]).any()):
                raise ValueError("<lat> tokens without a preceding <bot>: prompts must end in <bot> <lat>×K <eot>")
            return None
        K = self.latent_config.num_latents
        first = bot.float().argmax(1)  # [B]
        b0 = int(first[0])
        cols = list(range(b0 + 1, b0 + 1 + K))
        ok = bool(bot.any(1).all()) and bool((first == b0).all()) and cols[-1] < input_ids.shape[1]
        if ok:
            ok = bool((input_ids[:, cols] == self.token_ids["latent"]).all())
        if not ok:
            raise ValueError(
                f"every row needs <bot> followed by latent_num_latents={K} <lat> tokens at the same columns "
                f"(left-padded prompts ending in <bot> <lat>×K <eot>); first <bot> columns {first.tolist()[:8]}"
            )
        return cols

    def image_states(self, pixel_values=None, patch_embeds=None) -> torch.Tensor:
        """Patch embeddings in the LM's space: [B_img, P, D]."""
        if self.projector is None:
            raise ValueError("the prompt has <img> tokens but the policy was built without an image head "
                             "(set latent_image_size > 0)")
        if patch_embeds is None:
            if pixel_values is None:
                raise ValueError("the prompt has <img> tokens but neither pixel_values nor patch_embeds was given")
            patch_embeds = self.encoder(pixel_values.float())  # [B_img, P, d_v]
        return self.image_norm(self.projector(patch_embeds.float())) * self.image_scale  # [B_img, P, D]

    # ---------------------------------------------------------------- the latent path

    def _position_ids(self, am: torch.Tensor) -> torch.Tensor:
        # same convention as generate(): left padding does not shift positions
        return (am.long().cumsum(-1) - 1).clamp(min=0)

    def prepare_inputs_embeds(self, input_ids, attention_mask=None, pixel_values=None, patch_embeds=None,
                              insert_latents: bool = True):
        """Input embeddings with patches at ``<img>`` and latents at ``<lat>``: [B, N, D]."""
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        emb = self.lm.get_input_embeddings()(input_ids)  # [B, N, D]
        img = input_ids == self.token_ids["image"]  # [B, N]
        if img.any() and self.latent_config.num_patches:
            img = img & (img.long().cumsum(1) <= self.latent_config.num_patches)  # the prompt's; later ones are text
        if img.any():
            patches = self.image_states(pixel_values, patch_embeds)  # [B, P, D]
            counts = img.sum(1)
            if patches.shape[0] != input_ids.shape[0] or bool((counts != patches.shape[1]).any()):
                raise ValueError(f"each row needs one image of {patches.shape[1]} <img> tokens; got {patches.shape[0]} "
                                 f"images for {input_ids.shape[0]} rows and <img> counts {counts.tolist()[:8]}")
            emb = emb.masked_scatter(img[..., None], patches.to(emb.dtype))
        cols = self._latent_columns(input_ids) if insert_latents else None
        if cols is not None:
            emb = self._insert_latents(emb, am, input_ids, cols)
        return emb

    def _insert_latents(self, emb, am, input_ids, cols):
        lc = self.latent_config
        c0 = cols[0]
        types = self.type_ids(input_ids[:, :c0], am[:, :c0], latent_columns=[])  # [B, c0]
        has_img = bool((types == TYPE_IMAGE).any())
        candidates = (types == (TYPE_IMAGE if has_img else TYPE_PROMPT))  # [B, c0]
        sinks = sink_mask(am[:, :c0].bool(), lc.num_sinks)  # [B, c0]
        z = emb[:, c0:c0 + 1].float()  # [B, 1, D]  z_0 = embed(<lat>)
        zs, selected, xattn = [], [], []
        if lc.mode == "fast":
            # the same candidates the selector would choose from: image patches, else prompt text
            mem = emb[:, :c0].float()  # [B, c0, D]
            mem_mask = am[:, :c0].bool() & ~sinks & candidates
            mem_mask[:, -1] = True  # <bot> is always there: no empty row
            for k in range(len(cols)):
                z = self.lqformer(z, mem, mem_mask, step=k)
                zs.append(z)
                xattn.append(self.lqformer.last_attention)
        else:
            e = emb
            for k, col in enumerate(cols):
                pos = col - 1  # <bot> for k = 0, else the previous latent's slot
                h, weights = self._context_pass(e[:, :col], am[:, :col], pos)  # [B, col, D], [B, col]
                idx, valid = self.selector(weights[:, :c0], candidates, sinks)  # [B, k']
                v_sel = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))  # [B, k', D]
                mem = torch.cat([v_sel, h[:, pos:pos + 1]], 1).float()  # [B, k'+1, D]
                mem_mask = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)  # [B, k'+1]
                z = self.lqformer(z, mem, mem_mask, step=k)
                zs.append(z)
                selected.append(torch.where(valid, idx, -1))
                xattn.append(self.lqformer.last_attention)
                e = torch.cat([e[:, :col], z.to(e.dtype), e[:, col + 1:]], 1)
        Z = torch.cat(zs, 1).to(emb.dtype)  # [B, K, D]  the mean z_θ(x)
        Z = self._apply_latent_noise(Z)
        self.last_latent_info = {"selected": torch.stack(selected, 1) if selected else None,  # [B, K, k']
                                 "lqformer_attention": torch.cat(xattn, 1) if xattn else None,  # [B, K, M]
                                 "gates": self.lqformer.gates()}
        return torch.cat([emb[:, :c0], Z, emb[:, c0 + len(cols):]], 1)

    def _apply_latent_noise(self, Z: torch.Tensor) -> torch.Tensor:
        """Z [B, K, D] -> the latents the LM reads. Deterministic unless noise is on (noise_std > 0):
        while ``generate`` samples in training mode, z̃ = z + σ·ε is drawn and kept in
        ``last_sampled_latents``; inside :meth:`using_sampled_latents` the given z̃ is read and
        ``last_latent_logp`` = log N(z̃; z_θ, σ²I) [B] keeps the gradient to z_θ."""
        sigma = self.latent_config.noise_std
        if self._sampled is not None:
            zt = self._sampled.to(device=Z.device, dtype=Z.dtype)
            if zt.shape != Z.shape:
                raise ValueError(f"sampled latents have shape {tuple(zt.shape)}, the batch needs {tuple(Z.shape)}")
            self.last_latent_logp = latent_log_density(zt.float(), Z.float(), sigma)  # [B]
            return zt.detach()
        if self._draw_noise:
            zt = (Z + sigma * torch.randn_like(Z)).detach()  # [B, K, D]
            self.last_sampled_latents = zt
            return zt
        return Z

    @contextlib.contextmanager
    def using_sampled_latents(self, latents: torch.Tensor | None):
        """Passes inside read ``latents`` [B, K, D] (the z̃ a rollout was sampled with) instead of
        z_θ(x), and set ``last_latent_logp`` [B]. ``None``: the deterministic path, unchanged."""
        if latents is not None and not self.latent_config.noise_std > 0:
            raise ValueError("sampled latents were given but latent_noise is 0: there is no density to evaluate")
        previous, self._sampled = self._sampled, latents
        self.last_latent_logp = None  # set by the pass inside, never left over from an earlier one
        try:
            yield self
        finally:
            self._sampled = previous

    def _context_pass(self, e, am, pos):
        """One LM pass over a prefix: last-layer hidden states [B, n, D] and the attention row of
        ``pos`` averaged over ``select_layers`` and heads [B, n] (fp32)."""
        rows = torch.tensor([pos], device=e.device)
        acc = []

        def on_layer(layer, q, k, scaling):
            acc.append(attention_rows(q, k, scaling, am.bool(), rows)[:, 0])  # [B, n]

        with capture_qk(self.lm, self.select_layers, on_layer, stop_after_last=False):  # shadows outer captures
            out = self.lm(inputs_embeds=e, attention_mask=am, position_ids=self._position_ids(am),
                                   output_hidden_states=True, logits_to_keep=1, use_cache=False)
        if len(acc) != len(self.select_layers):
            raise RuntimeError(f"captured {len(acc)} of {len(self.select_layers)} selection layers")
        return out.hidden_states[-1], torch.stack(acc).mean(0)

    # ---------------------------------------------------------------- forward / generate

    @property
    def base_model(self):
        """The decoder with latents and patches in place (returns ``last_hidden_state``).

        TRL's fused LM head (``add_fused_lm_head``) computes log-probs as
        ``lm_head(model.base_model(**inputs).last_hidden_state)``; this keeps that path exact.
        """
        return _LatentBackbone(self)

    def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, pixel_values=None, patch_embeds=None,
                position_ids=None, use_cache=False, num_images=None, **kwargs):
        """Causal-LM forward with latents and patches in place; logits align 1:1 with ``input_ids``."""
        kwargs.pop("inputs_embeds", None)
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        emb = self.prepare_inputs_embeds(input_ids, am, pixel_values, patch_embeds)
        if position_ids is None:
            position_ids = self._position_ids(am)
        return self.lm(inputs_embeds=emb, attention_mask=am, position_ids=position_ids,
                                logits_to_keep=logits_to_keep, use_cache=use_cache, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, pixel_values=None, patch_embeds=None, num_images=None,
                 **kwargs):
        """Latents from the prompt, then the LM's own ``generate`` from the embeddings.

        With ``latent_noise`` > 0, a *sampling* call in training mode draws z̃ ~ N(z, σ²I) and
        keeps it in ``last_sampled_latents`` [B, K, D] (the trainer stores it with the rollout);
        greedy or eval-mode calls use the mean z.

        Returns prompt ids followed by the new tokens ([B, P + T]; or a ``GenerateOutput`` whose
        ``sequences`` are that, with ``return_dict_in_generate=True``), like any causal LM.
        """
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        gc = kwargs.get("generation_config") or self.generation_config
        sampling = bool(kwargs.get("do_sample", getattr(gc, "do_sample", False)))
        self._draw_noise = self.latent_config.noise_std > 0 and self.training and sampling and self._sampled is None
        self.last_sampled_latents = None
        try:
            emb = self.prepare_inputs_embeds(input_ids, am, pixel_values, patch_embeds)
        finally:
            self._draw_noise = False
        out = self.lm.generate(inputs_embeds=emb, attention_mask=am, **kwargs)
        seqs = out.sequences if hasattr(out, "sequences") else out  # new tokens only (inputs_embeds given)
        full = torch.cat([input_ids, seqs.to(input_ids.device)], 1)
        if hasattr(out, "sequences"):
            out.sequences = full
            return out
        return full

    def can_generate(self) -> bool:
        return True

    # ---------------------------------------------------------------- save / load

    def latent_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that is not the wrapped LM, plus the LM's rows of the placeholder tokens."""
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("lm.")}
        ids = torch.tensor(sorted(self.token_ids.values()))
        sd["token_rows.input"] = self.lm.get_input_embeddings().weight.detach()[ids].cpu().contiguous()
        out_emb = self.lm.get_output_embeddings()
        if out_emb is not None and out_emb.weight.data_ptr() != self.lm.get_input_embeddings().weight.data_ptr():
            sd["token_rows.output"] = out_emb.weight.detach()[ids].cpu().contiguous()
        return sd

    def save_pretrained(self, save_directory, **kwargs):
        """Writes ``config.json``, ``lm/`` (the PEFT adapter, or the full LM without PEFT) and
        ``latent.safetensors`` (LQ-Former, encoder, projector, placeholder-token rows)."""
        from safetensors.torch import save_file

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(path))
        self.lm.save_pretrained(str(path / "lm"), safe_serialization=True)
        save_file(self.latent_state_dict(), str(path / "latent.safetensors"), metadata={"format": "pt"})
        (path / "rlattn_backbone.json").write_text(json.dumps({"peft": hasattr(self.lm, "peft_config")}))

    @classmethod
    def load(cls, save_directory, base_lm: nn.Module | None = None, is_trainable: bool = False) -> "LatentPolicy":
        """Inverse of :meth:`save_pretrained`. A PEFT save needs ``base_lm`` (the base model with
        its embeddings already resized to the saved vocabulary, or it is resized here)."""
        from safetensors.torch import load_file

        path = Path(save_directory)
        config = LatentPolicyConfig.from_pretrained(str(path))
        meta = json.loads((path / "rlattn_backbone.json").read_text())
        if meta["peft"]:
            if base_lm is None:
                raise ValueError(f"{path} holds a LoRA adapter: pass base_lm= (the base causal LM)")
            from peft import PeftModel

            if base_lm.get_input_embeddings().weight.shape[0] < config.vocab_size:
                base_lm.resize_token_embeddings(config.vocab_size, mean_resizing=False)
            lm = base_lm
        else:
            lm = AutoModelForCausalLM.from_pretrained(str(path / "lm"))
        sd = load_file(str(path / "latent.safetensors"))
        ids = torch.tensor(sorted(config.token_ids.values()))
        with torch.no_grad():
            lm.get_input_embeddings().weight[ids] = sd.pop("token_rows.input").to(lm.get_input_embeddings().weight.dtype)
            if "token_rows.output" in sd:
                lm.get_output_embeddings().weight[ids] = sd.pop("token_rows.output").to(lm.get_output_embeddings().weight.dtype)
        if meta["peft"]:
            lm = PeftModel.from_pretrained(lm, str(path / "lm"), is_trainable=is_trainable)
        policy = cls(config, lm=lm)
        missing, unexpected = policy.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("lm.")]
        if missing or unexpected:
            raise ValueError(f"latent.safetensors does not match the config: missing {missing}, unexpected {unexpected}")
        policy.float_latent_modules()
        return policy


def latent_log_density(sampled: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """``Σ_k log N(z̃_k; z_k, σ²I)`` per row: sampled, mean [B, K, D] -> [B] (fp32)."""
    d = sampled[0].numel()
    sq = ((sampled - mean) / sigma).pow(2).flatten(1).sum(1)  # [B]
    return -0.5 * sq - d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))


class _LatentBackbone:
    """Callable view of a LatentPolicy as a decoder: ``(input_ids, ...) -> BaseModelOutputWithPast``."""

    def __init__(self, policy: LatentPolicy):
        self._policy = policy

    def __call__(self, input_ids=None, attention_mask=None, pixel_values=None, patch_embeds=None, position_ids=None,
                 logits_to_keep=None, num_images=None, **kwargs):
        p = self._policy
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        emb = p.prepare_inputs_embeds(input_ids, am, pixel_values, patch_embeds)
        if position_ids is None:
            position_ids = p._position_ids(am)
        return p.lm.get_decoder()(inputs_embeds=emb, attention_mask=am, position_ids=position_ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self._policy.lm.get_decoder(), name)


def apply_lora(policy: LatentPolicy, lora_config) -> LatentPolicy:
    """LoRA on the wrapped LM only; the LQ-Former, encoder and projector stay fully trainable.

    Don't pass ``peft_config`` to TRL for a LatentPolicy: TRL would wrap the whole wrapper.
    """
    from peft import get_peft_model

    policy.lm = get_peft_model(policy.lm, lora_config)
    return policy


def trainable_parameter_groups(policy: LatentPolicy) -> dict[str, int]:
    """Trainable parameter counts by part: lora, lqformer, encoder, projector, lm (non-LoRA)."""
    counts: dict[str, int] = {}
    for name, p in policy.named_parameters():
        if not p.requires_grad:
            continue
        part = "lora" if "lora_" in name else name.split(".")[0]
        counts[part] = counts.get(part, 0) + p.numel()
    return counts
