"""Load any model a user wants to evaluate: checkpoint dir, hub id, ``embedded:...``, LoRA adapter.

Why one loader: a before/after-training comparison puts a base model and the adapter trained
from it side by side, so both must load from one ``models`` list with no extra flags. The loading
itself is :func:`rlattn.models.load_model_and_tokenizer` (the one loader training, evaluation and
the inspector share); this module adds the report's short names.

| spec | how it loads |
| --- | --- |
| ``embedded:<name>`` | :func:`rlattn.models.resolve_model` (converted once into the cache) |
| a dir with ``adapter_config.json`` | its ``base_model_name_or_path`` (itself any spec here), then ``PeftModel.from_pretrained`` and ``merge_and_unload`` (faster generation, same outputs) |
| a dir with ``config.json`` | ``AutoModelForCausalLM.from_pretrained`` |
| ``org/name`` that is not a local path | the hub (or its local cache) |

A path that does not exist (absolute, ``./``, ``~``, or more than one ``/``), a directory with
neither config file, or a checkpoint that fails to load raises an error naming the path. The
tokenizer is taken from the adapter/checkpoint dir when it has one, else from the base model;
it is set to left padding with a pad token (batched generation needs both).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlattn.models import LoadedModel, ModelLoadError, locate_model

__all__ = ["LoadedModel", "ModelLoadError", "load_eval_model", "locate_model", "model_label"]


def model_label(spec: str) -> str:
    """A short report name for a model spec: ``embedded:x`` -> ``x``; a path -> its last part,
    with the parent for ``checkpoint-*`` dirs (``anchor_credit/checkpoint-40``)."""
    if spec.startswith("embedded:"):
        return spec.split(":", 1)[1]
    parts = [p for p in Path(spec).parts if p not in ("/", ".")]
    if not parts:
        return spec
    if len(parts) >= 2 and (parts[-1].startswith("checkpoint") or parts[-1] in ("interrupted", "final")):
        return f"{parts[-2]}/{parts[-1]}"
    if len(parts) == 2 and not os.path.exists(spec):  # hub id org/name
        return spec
    return parts[-1]


def load_eval_model(spec: str, dtype: str = "auto", device: str = "cpu", attn_implementation: str = "sdpa") -> LoadedModel:
    """Load ``spec`` (see the module docstring) onto ``device`` in eval mode (``rlattn.models``' loader)."""
    from rlattn.models import load_model_and_tokenizer

    return load_model_and_tokenizer(spec, dtype=dtype, attn_implementation=attn_implementation, device=device, eval_mode=True)
