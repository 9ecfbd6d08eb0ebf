"""Plug a rollout backend into TRL's generation hook (``GRPOTrainer(rollout_func=...)``).

TRL 1.16 calls ``rollout_func(prompts, trainer)`` from ``GRPOTrainer._generate`` with this
process's prompts (already repeated ``num_generations`` times by TRL's sampler, one entry per
completion) and expects ``{"prompt_ids", "completion_ids", "logprobs", ...extra}``: ragged lists,
one completion per prompt entry; extra fields go to the reward functions. Chat templating happens
here, with the trainer's own ``_tokenize_prompts`` so the token ids are exactly TRL's.

Selection (``rollout_backend`` in the recipe), see :func:`resolve_rollout`:
- ``transformers``: TRL's own generation with the policy (no ``rollout_func``).
- ``vllm`` with CUDA: TRL's ``use_vllm`` (colocate or server mode) — TRL owns the weight sync.
- ``vllm`` without CUDA: rlattn's CPU engine (:mod:`rlattn.rollouts.vllm_cpu`) through
  ``rollout_func``; before each generation whose ``global_step`` differs from the engine's policy
  version, the policy is handed over (LoRA adapter, or full weights).
"""

from __future__ import annotations

import contextlib

import logging
import time

from .base import RolloutError, SamplingSpec
from .names import BACKENDS

logger = logging.getLogger(__name__)

def _unwrap(trainer):
    model = trainer.model
    try:
        model = trainer.accelerator.unwrap_model(model)
    except Exception:  # noqa: BLE001 - an unwrapped model is fine as is
        pass
    return model


def _eos_ids(trainer) -> list[int]:
    """TRL's own EOS ids for the trainer (its ``eos_token_ids``), else the tokenizer's."""
    ids = list(getattr(trainer, "eos_token_ids", None) or [])
    if ids:
        return [int(i) for i in ids]
    from rlattn.models import eos_token_ids

    return eos_token_ids(None, getattr(trainer, "_tokenizer", None) or trainer.processing_class)


def _base_model_path(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config._name_or_path


class TRLRolloutFunc:
    """A TRL ``rollout_func``: ``fn(prompts, trainer) -> dict``. Owns its backend (lazy start)."""

    def __init__(self, backend: str, *, model_path: str | None = None, engine_options: dict | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"rollout_backend={backend!r} is not one of {BACKENDS}")
        self.backend_name = backend
        self.model_path = model_path
        self.engine_options = dict(engine_options or {})
        self.backend = None
        self.version: int | None = None

    def _start(self, trainer):
        model = _unwrap(trainer)
        if self.backend_name == "transformers":
            from .hf_backend import HFRolloutBackend

            self.backend = HFRolloutBackend(model, getattr(trainer, "_tokenizer", None) or trainer.processing_class,
                                            eos_token_ids=_eos_ids(trainer), **self.engine_options)
            return
        from .vllm_cpu import VLLMCPUBackend, VLLMCPUConfig

        path = self.model_path or _base_model_path(model)
        opts = dict(self.engine_options)
        if hasattr(model, "peft_config") and opts.get("lora_handover", "merged") == "adapter":
            opts.setdefault("enable_lora", True)
            r = next(iter(model.peft_config.values())).r
            opts["max_lora_rank"] = max(int(opts.get("max_lora_rank", 0)), round_lora_rank(r))
        self.backend = VLLMCPUBackend(VLLMCPUConfig(model=path, **opts), eos_token_ids=_eos_ids(trainer)).start()
        logger.info("rlattn: vLLM CPU engine started in %.1f s (model %s)", self.backend.start_s, path)

    def __call__(self, prompts: list, trainer) -> dict:
        if self.backend is None:
            self._start(trainer)
        mode = "train" if trainer.model.training else "eval"
        step = int(trainer.state.global_step)
        if self.version != step:
            # a trainer that hangs extra modules on the policy (PPO's critic) hides them while the
            # engine copies the policy's weights: ``policy_weights_only()``, a context manager
            with getattr(trainer, "policy_weights_only", contextlib.nullcontext)():
                self.backend.sync(_unwrap(trainer), step)
            self.version = step
            trainer._metrics[mode]["rollouts/sync_s"].append(getattr(self.backend, "last_sync_s", 0.0))
        prompt_ids = trainer._tokenize_prompts(prompts)[0]
        sampling = SamplingSpec.from_trainer_args(trainer.args)
        t0 = time.perf_counter()
        batch = self.backend.generate([list(p) for p in prompt_ids], sampling)
        dt = time.perf_counter() - t0
        trainer._metrics[mode]["rollouts/generate_s"].append(dt)
        trainer._metrics[mode]["rollouts/tokens_per_s"].append(batch.num_completion_tokens / max(dt, 1e-9))
        trainer._metrics[mode]["rollouts/skipped"].append(float(batch.num_skipped))
        return batch.to_trl()

    def close(self):
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def round_lora_rank(r: int) -> int:
    """vLLM accepts max_lora_rank from a fixed set; take the smallest that holds r."""
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if r <= allowed:
            return allowed
    raise ValueError(f"lora_r={r} is larger than vLLM's largest max_lora_rank (512)")


def make_rollout_func(backend: str, *, model_path: str | None = None, **engine_options) -> TRLRolloutFunc:
    """A TRL-compatible ``rollout_func`` for ``backend`` (``transformers`` or ``vllm`` = CPU engine).

    ``engine_options`` go to :class:`~rlattn.rollouts.vllm_cpu.VLLMCPUConfig` (dtype, max_model_len,
    kvcache_space_gb, enforce_eager, start_timeout_s, request_timeout_s, on_prompt_too_long, ...).
    """
    return TRLRolloutFunc(backend, model_path=model_path, engine_options=engine_options)


def resolve_rollout(training_args, model_path: str | None = None):
    """Map ``training_args.rollout_backend`` to what the trainer needs; returns a rollout_func or None.

    - ``transformers`` -> None (TRL's own generate); with ``rollout_merge_lora`` and a LoRA policy,
      rlattn's transformers backend generating with merged weights (``rollouts.hf_backend``).
    - ``vllm`` and CUDA available -> sets ``training_args.use_vllm = True`` (TRL's colocate/server
      modes, chosen by ``vllm_mode``) and returns None.
    - ``vllm`` without CUDA -> the CPU engine's rollout_func. Raises a clear error when vLLM is not
      importable or when ``use_vllm`` was also set (TRL's CPU weight sync fails).
    """
    backend = getattr(training_args, "rollout_backend", "transformers")
    if backend not in BACKENDS:
        raise ValueError(f"rollout_backend={backend!r} is not one of {BACKENDS}")
    if backend == "transformers":
        if getattr(training_args, "rollout_merge_lora", False):  # a full fine-tune generates with itself anyway
            return make_rollout_func("transformers", merge_lora=True,
                                     share_prompts=bool(getattr(training_args, "rollout_share_prompts", True)),
                                     drop_finished=bool(getattr(training_args, "rollout_drop_finished", True)),
                                     fast_decode=bool(getattr(training_args, "rollout_fast_decode", True)))
        return None
    import torch

    if torch.cuda.is_available() and not getattr(training_args, "use_cpu", False):
        if not getattr(training_args, "use_vllm", False):
            logger.info("rlattn: rollout_backend=vllm with CUDA: setting use_vllm=True (TRL's engine, vllm_mode=%s)",
                        getattr(training_args, "vllm_mode", "colocate"))
        training_args.use_vllm = True
        return None
    if getattr(training_args, "use_vllm", False):
        raise ValueError("rollout_backend=vllm on CPU runs rlattn's own engine; use_vllm=true (TRL's engine) fails "
                         "on CPU at weight sync. Set use_vllm: false.")
    from .vllm_cpu import INSTALL_HINT, vllm_available

    ok, why = vllm_available()
    if not ok:
        raise RolloutError(f"rollout_backend=vllm on CPU needs vllm-cpu, but `import vllm` failed ({why}). {INSTALL_HINT}")
    opts = {}
    max_len = getattr(training_args, "vllm_max_model_length", None)
    if max_len:
        opts["max_model_len"] = int(max_len)
    opts["seed"] = int(getattr(training_args, "seed", 0))
    opts["lora_handover"] = getattr(training_args, "rollout_vllm_lora_handover", "merged")
    opts["kvcache_space_gb"] = int(getattr(training_args, "rollout_vllm_kvcache_gb", 1))
    opts["pause_when_idle"] = bool(getattr(training_args, "rollout_vllm_pause_idle", True))
    if getattr(training_args, "cpu_precision_fallback", None):  # no native bf16 kernels here (rlattn.cli.apply_cpu_precision)
        opts["dtype"] = "float32"
    return make_rollout_func("vllm", model_path=model_path, **opts)
