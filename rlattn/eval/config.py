"""``EvalConfig``: what one evaluation run does, parsed from flat YAML + command line.

Why a dataclass parsed by TRL's ``TrlParser`` (as the training scripts are): the same recipe
conventions everywhere. ``scripts/evaluate.py recipes/eval/<name>.yaml [--key value ...]``,
every field has ``help``, unknown YAML keys fail naming the key, and a bad value fails at parse
time naming the key, the value and what is allowed. ``--model A --model B`` on the command line
is a shorthand for ``--models A B`` (it replaces the recipe's ``models``).

The *protocol* (what makes two reports comparable: n per dataset, k values, temperature, top_p,
max_new_tokens, template, grading) is :meth:`EvalConfig.protocol`; it is written into every
report and its fingerprint into every per-sample record, so a resumed run never mixes samples
drawn under different settings.

Grading: ``grading: [strict, lenient]`` grades every sample both ways and reports both (the first
listed is the headline of the summary and plots); unset, it is ``[lenient]`` when
``accuracy_fallback_last_number`` is true, else ``[strict]`` (:meth:`EvalConfig.gradings`).
Paired comparisons against the first model (``bootstrap_resamples``, ``bootstrap_seed``) are
computed from the samples at report time and are not part of the protocol.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Sequence

__all__ = ["BACKENDS", "GRADINGS", "PAPER_TABLES", "EvalConfig", "default_k_values", "parse_eval_args"]

from rlattn.utils import check_cpu_precision, field_help as _h  # noqa: E402
from rlattn.rollouts.names import BACKENDS, LORA_HANDOVERS  # noqa: E402  (the one list; ``vllm`` needs vllm installed: docs/evaluation.md)

#: ``grading`` entries: strict = the last non-empty \boxed{} only; lenient = that, else the last number.
GRADINGS = ("strict", "lenient")
_ANSWER_RULES = {"strict": "last non-empty \\boxed{}", "lenient": "last non-empty \\boxed{} (else the last number)"}

#: ``paper_table`` values: which Table 4 block of arXiv 2510.13554 the report quotes next to the
#: measured numbers (docs/paper.md).
PAPER_TABLES = ("none", "qwen3_4b_1k", "qwen3_8b_1k", "qwen3_4b_8k")


def default_k_values(n: int) -> list[int]:
    """1, 2, 4, ... up to ``n``, plus ``n`` itself: the k of pass@k / maj@k when none are given."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


@dataclass
class EvalConfig:
    """One evaluation run: models x datasets, the sampling protocol, grading and outputs."""

    # --- what to evaluate ---
    models: list[str] = field(default_factory=lambda: ["embedded:smollm2-135m-instruct"], metadata=_h("Models to evaluate, the first is the baseline of every delta: a local checkpoint dir, a hub id, 'embedded:<name>', or a PEFT/LoRA adapter dir (its adapter_config.json names the base model). On the command line: --model A --model B, or --models A B."))
    model_labels: list[str] | None = field(default=None, metadata=_h("Names shown in the report, one per model (default: derived from the path, e.g. 'anchor_credit/checkpoint-40')."))
    datasets: list[str] = field(default_factory=lambda: ["math500"], metadata=_h("Bundled set names (math500, aime24, aime25, amc23, minerva_math, olympiadbench, gsm8k_test, ...) or local .jsonl/.json/.parquet files with problem/answer fields."))
    limit: int | None = field(default=None, metadata=_h("Evaluate only the first N problems of each dataset, in file order (None: all)."))

    # --- sampling protocol ---
    n: int = field(default=1, metadata=_h("Samples per problem (avg@n averages pass@1 over them)."))
    n_overrides: list[str] | None = field(default=None, metadata=_h("Per-dataset n as 'dataset=n' entries, e.g. ['aime24=16', 'aime25=16'] (the paper's avg@16 on AIME)."))
    k_values: list[int] | None = field(default=None, metadata=_h("k of pass@k and maj@k; each must be <= every dataset's n (default: 1, 2, 4, ... up to each dataset's n, and n)."))
    temperature: float = field(default=0.6, metadata=_h("Sampling temperature; 0 means greedy decoding (then n must be 1)."))
    top_p: float = field(default=0.95, metadata=_h("Nucleus sampling mass in (0, 1]. top_k is always disabled."))
    max_new_tokens: int = field(default=1024, metadata=_h("Response budget in tokens; a response with no EOS within it counts as truncated."))
    prompt_template: str = field(default="chat", metadata=_h("Prompt template (rlattn.data.PROMPT_TEMPLATES: chat, plain, r1) or 'pkg.mod:fn'. Use the one the model was trained with."))
    seed: int = field(default=0, metadata=_h("Sampling seed; each generation batch is seeded from (seed, model, dataset, first sample), so reruns are reproducible."))

    # --- how to run ---
    backend: str = field(default="transformers", metadata=_h("Generation backend: transformers (batched HF generate, CPU or GPU) | vllm (rlattn's vLLM engine, one process per model; needs vllm: scripts/setup_vllm_cpu.sh on CPU; dtype is honoured, device/attn_implementation are vLLM's own)."))
    vllm_lora: str = field(default="merged", metadata=_h("backend vllm, a LoRA adapter dir: merged (default: merged into a temporary copy of its base in float32, as the transformers backend does; on 2 CPU cores vLLM's LoRA path made no progress on 300 prompts in 8 min, the merged copy answered 600 in 5-7) | adapter (a LoRARequest on the base model, no copy of the weights)."))
    batch_size: int = field(default=16, metadata=_h("Responses generated per generate() call (problems x samples, left-padded)."))
    dtype: str = field(default="auto", metadata=_h("Model dtype: auto (the checkpoint's) | float32 | bfloat16 | float16."))
    device: str = field(default="auto", metadata=_h("auto (cuda when available, else cpu) | cpu | cuda | cuda:N."))
    cpu_precision: str = field(default="auto", metadata=_h("On CPU: auto evaluates a bfloat16/float16 dtype in float32 when this CPU has no native kernels for it (oneDNN needs AVX-512; on an AVX2-only EPYC bf16 matmuls ran ~100x slower than float32) | keep: as configured."))
    attn_implementation: str = field(default="sdpa", metadata=_h("Attention kernel for generation: sdpa | eager | flash_attention_2."))
    torch_threads: int | None = field(default=None, metadata=_h("CPU threads for torch (None: torch's default). On a CPU shared with other jobs, 1 avoids thread oversubscription, which was measured to slow decoding over 10x."))

    # --- grading (the training reward's bounded grader) ---
    accuracy_fallback_last_number: bool = field(default=False, metadata=_h("Grade the last number when a response has no non-empty \\boxed{} (the lenient accuracy reward). Default false: strict, as benchmarks are usually reported. Shorthand for grading: [lenient]."))
    grading: list[str] | None = field(default=None, metadata=_h("Gradings to report, each 'strict' (last non-empty \\boxed{} only) or 'lenient' (else the last number); [strict, lenient] grades every sample both ways and reports both, the first listed being the headline (summary, plots). None: [lenient] if accuracy_fallback_last_number, else [strict]."))
    grade_timeout_s: float = field(default=5.0, metadata=_h("Per-sample grading bound, enforced by killing the grader worker; a sample that hits it is counted and listed as ungraded."))
    grade_workers: int | None = field(default=None, metadata=_h("Grader worker processes (None: min(4, CPU count))."))

    # --- paired comparison against the first model (report only) ---
    bootstrap_resamples: int = field(default=10_000, metadata=_h("Bootstrap resamples over problems for the 95 % interval of each model's paired difference against the first model (at least 2000)."))
    bootstrap_seed: int = field(default=0, metadata=_h("Seed of the bootstrap resampling (fixed, so a report is reproducible)."))

    # --- outputs ---
    output_dir: str = field(default="outputs/eval", metadata=_h("Where report.md, report.json, samples.jsonl and plots/ go."))
    resume: bool = field(default=True, metadata=_h("Reuse samples already graded in output_dir/samples.jsonl (same protocol only); false starts over and overwrites them."))
    plots: bool = field(default=True, metadata=_h("Write PNG plots (accuracy bars, pass@k curves) into output_dir/plots."))
    progress: bool = field(default=True, metadata=_h("Show progress bars (stderr)."))
    paper_table: str = field(default="none", metadata=_h(f"Quote a Table 4 block of the paper next to the measured numbers: {' | '.join(PAPER_TABLES)}."))

    def __post_init__(self):
        self.models = _str_list(self.models, "models")
        self.datasets = _str_list(self.datasets, "datasets")
        if not self.models:
            raise ValueError("models is empty: give at least one model (e.g. --model embedded:smollm2-135m-instruct)")
        if not self.datasets:
            raise ValueError("datasets is empty: give at least one dataset name or file (e.g. math500)")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models={self.models!r} lists a model twice (samples are keyed by the model spec, so both would be one run)")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets={self.datasets!r} lists a dataset twice")
        if self.model_labels is not None:
            self.model_labels = _str_list(self.model_labels, "model_labels")
            if len(self.model_labels) != len(self.models):
                raise ValueError(f"model_labels={self.model_labels!r} has {len(self.model_labels)} names for {len(self.models)} models; give one per model")
            if len(set(self.model_labels)) != len(self.model_labels):
                raise ValueError(f"model_labels={self.model_labels!r} repeats a name; labels must be unique")
        _positive_int(self.n, "n")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.max_new_tokens, "max_new_tokens")
        if self.limit is not None:
            _positive_int(self.limit, "limit")
        if self.torch_threads is not None:
            _positive_int(self.torch_threads, "torch_threads")
        if self.grade_workers is not None:
            _positive_int(self.grade_workers, "grade_workers")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} must be a number >= 0 (0: greedy)")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        if isinstance(self.grade_timeout_s, bool) or not isinstance(self.grade_timeout_s, (int, float)) or not self.grade_timeout_s > 0:
            raise ValueError(f"grade_timeout_s={self.grade_timeout_s!r} must be a positive number of seconds")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} is not one of auto, float32, bfloat16, float16")
        check_cpu_precision(self.cpu_precision)
        if self.vllm_lora not in LORA_HANDOVERS:
            raise ValueError(f"vllm_lora={self.vllm_lora!r} is not one of {', '.join(LORA_HANDOVERS)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if isinstance(self.bootstrap_resamples, bool) or not isinstance(self.bootstrap_resamples, int) or self.bootstrap_resamples < 2000:
            raise ValueError(f"bootstrap_resamples={self.bootstrap_resamples!r} must be an integer >= 2000 (fewer makes the 2.5 % tails of the interval noisy)")
        if isinstance(self.bootstrap_seed, bool) or not isinstance(self.bootstrap_seed, int) or self.bootstrap_seed < 0:
            raise ValueError(f"bootstrap_seed={self.bootstrap_seed!r} must be a non-negative integer")
        self.gradings()  # validates grading against accuracy_fallback_last_number
        if self.paper_table not in PAPER_TABLES:
            raise ValueError(f"paper_table={self.paper_table!r} is not one of {', '.join(PAPER_TABLES)}")
        from rlattn.data import get_template

        get_template(self.prompt_template)  # unknown templates fail here, listing the valid ones
        overrides = self.n_per_dataset()  # validates n_overrides
        if self.temperature == 0 and any(v > 1 for v in overrides.values()):
            raise ValueError(
                f"temperature=0 (greedy) gives n identical samples; set n=1 (and no n_overrides above 1), got n={self.n!r}, "
                f"n_overrides={self.n_overrides!r}"
            )
        if self.k_values is not None:
            if not self.k_values:
                raise ValueError("k_values is empty: leave it unset for the default, or list k values like [1, 4]")
            for k in self.k_values:
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise ValueError(f"k_values={self.k_values!r}: every k must be a positive integer, got {k!r}")
            smallest = min(overrides.values())
            too_big = [k for k in self.k_values if k > smallest]
            if too_big:
                where = min(overrides, key=overrides.get)
                raise ValueError(
                    f"k_values={self.k_values!r}: k={too_big[0]} is larger than n={smallest} (dataset {where!r}); "
                    "pass@k and maj@k need k <= n samples. Raise n (or n_overrides) or drop that k"
                )
            self.k_values = sorted(set(self.k_values))

    # ---- derived views ------------------------------------------------------------------------
    def n_per_dataset(self) -> dict[str, int]:
        """dataset -> samples per problem (``n``, or its ``n_overrides`` entry)."""
        out = {d: self.n for d in self.datasets}
        for entry in self.n_overrides or []:
            name, sep, value = str(entry).rpartition("=")
            if not sep or not name:
                raise ValueError(f"n_overrides entry {entry!r} must look like 'dataset=n', e.g. 'aime24=16'")
            if name not in out:
                raise ValueError(f"n_overrides entry {entry!r} names {name!r}, which is not in datasets={self.datasets!r}")
            try:
                count = int(value)
            except ValueError:
                raise ValueError(f"n_overrides entry {entry!r}: {value!r} is not an integer") from None
            _positive_int(count, f"n_overrides[{name}]")
            out[name] = count
        return out

    def gradings(self) -> list[str]:
        """The gradings reported, headline first: ``grading``, or the one ``accuracy_fallback_last_number`` names."""
        if self.grading is None:
            return ["lenient" if self.accuracy_fallback_last_number else "strict"]
        grading = _str_list(self.grading, "grading")
        if not grading or any(g not in GRADINGS for g in grading) or len(set(grading)) != len(grading):
            raise ValueError(f"grading={self.grading!r} must list {' and/or '.join(GRADINGS)}, each once, e.g. [strict, lenient]")
        if self.accuracy_fallback_last_number and "lenient" not in grading:
            raise ValueError(
                f"accuracy_fallback_last_number=true asks for lenient grading but grading={grading!r} leaves it out; "
                "add lenient to grading or set accuracy_fallback_last_number: false"
            )
        return grading

    def k_for(self, dataset: str) -> list[int]:
        """The k of pass@k / maj@k for one dataset."""
        n = self.n_per_dataset()[dataset]
        return list(self.k_values) if self.k_values is not None else default_k_values(n)

    def protocol(self) -> dict:
        """The settings that decide what a sample is and how it is scored (written into reports)."""
        gradings = self.gradings()
        return {
            "n": self.n_per_dataset(),
            "k": {d: self.k_for(d) for d in self.datasets},
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": "disabled",
            "max_new_tokens": self.max_new_tokens,
            "prompt_template": self.prompt_template if isinstance(self.prompt_template, str) else repr(self.prompt_template),
            "seed": self.seed,
            "limit": self.limit,
            "backend": self.backend,
            **({"vllm_lora": self.vllm_lora} if self.backend == "vllm" else {}),
            "grading": {
                "grader": "rlattn.rewards BoundedGrader (math-verify in worker processes), as the accuracy reward",
                "gradings": gradings,  # the headline first
                "answer": "; ".join((f"{g}: " if len(gradings) > 1 else "") + _ANSWER_RULES[g] for g in gradings),
                "timeout_s": float(self.grade_timeout_s),
            },
        }

    def sample_fingerprint(self) -> str:
        """Short hash of what decides a sample's text and grade (not n, k or limit: more samples may be added)."""
        keys = {
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "max_new_tokens": self.max_new_tokens,
            "prompt_template": str(self.prompt_template),
            "seed": self.seed,
            "backend": self.backend,
            **({"vllm_lora": self.vllm_lora} if self.backend == "vllm" else {}),  # merged or LoRARequest: other kernels
            "fallback": self.gradings() == ["lenient"],  # as before `grading` existed, so older runs resume
        }
        if len(self.gradings()) > 1:
            keys["grading"] = self.gradings()  # every sample carries each of these grades
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return asdict(self)


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _str_list(value, name: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{name}={value!r} must be a list of non-empty strings")
    return [v.strip() for v in value]


def _collect_model_flags(argv: list[str]) -> list[str]:
    """Turn repeated ``--model X`` (and ``--model=X``) into one ``--models X Y ...``."""
    rest, models = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--model":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ValueError("--model needs a value: a checkpoint dir, hub id, adapter dir or embedded:<name>")
            models.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--model="):
            models.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    if models:
        if "--models" in rest:
            raise ValueError("give models either with --model (repeatable) or with --models, not both")
        rest += ["--models", *models]
    return rest


def parse_eval_args(argv: Sequence[str] | None = None) -> EvalConfig:
    """Parse an :class:`EvalConfig` from ``[recipe.yaml] [--key value ...]`` (TrlParser conventions)."""
    from trl import TrlParser

    from rlattn.utils import normalise_argv

    argv = _collect_model_flags(normalise_argv(sys.argv[1:] if argv is None else argv))
    parser = TrlParser((EvalConfig,))
    (config,) = parser.parse_args_and_config(argv)
    return config
