"""rlattn.rollouts: generation backends and rollout records.

Today: rollout records (``load_records``, ``write_records``, ``append_records``) and the
``transformers`` backend, which is TRL's own generation with the policy. The vLLM backends are not
built yet: see the README's status table.
"""

from .records import append_records, load_records, write_records

__all__ = ["append_records", "load_records", "write_records"]
