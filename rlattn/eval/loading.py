"""Load any model a user wants to evaluate: checkpoint dir, hub id, ``embedded:...``, LoRA adapter.

Why one loader: a before/after-training comparison puts a base model and the adapter trained
from it side by side, so both must load from one ``models`` list with no extra flags.

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

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoadedModel", "ModelLoadError", "load_eval_model", "locate_model", "model_label"]


class ModelLoadError(ValueError):
    """A model spec that names something which does not load; the message names the path."""

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class LoadedModel:
    """A model ready for generation, and where it came from (written into the report)."""

    spec: str
    kind: str  # "embedded" | "checkpoint" | "adapter" | "hub"
    path: str  # resolved dir or hub id
    base: str | None  # adapters: the base model spec
    model: object
    tokenizer: object

    def info(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "path": self.path, "base": self.base}


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


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or spec.endswith(os.sep) or os.sep == "\\" and "\\" in spec


def _torch_dtype(dtype: str):
    import torch

    return "auto" if dtype == "auto" else getattr(torch, dtype)


def _load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_causal_lm(path: str, dtype: str, attn_implementation: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype), attn_implementation=attn_implementation)


def locate_model(spec: str) -> tuple[str, str, str | None]:
    """``(kind, path, base)`` for a spec without loading weights; raises for missing paths.

    ``embedded:`` specs are not converted here (``path`` is the spec itself).
    """
    from rlattn.models import is_embedded

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"models entry {spec!r} must be a non-empty string")
    expanded = os.path.expanduser(spec)
    if is_embedded(spec):
        return "embedded", spec, None
    if os.path.isdir(expanded):
        adapter_cfg = Path(expanded) / "adapter_config.json"
        if adapter_cfg.is_file():
            kind, path = "adapter", expanded
            try:
                base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ModelLoadError(
                    f"models entry {spec!r}: cannot read the base model from {adapter_cfg} ({type(err).__name__}: {err}); "
                    "a PEFT adapter dir needs adapter_config.json with base_model_name_or_path"
                ) from None
            if not base:
                raise ModelLoadError(f"models entry {spec!r}: {adapter_cfg} has an empty base_model_name_or_path")
        elif (Path(expanded) / "config.json").is_file():
            kind, path, base = "checkpoint", expanded, None
        else:
            raise FileNotFoundError(
                f"models entry {spec!r}: {expanded} has neither config.json (a model checkpoint) nor "
                "adapter_config.json (a PEFT/LoRA adapter); point at the dir that holds one of them"
            )
    elif os.path.exists(expanded):
        raise ModelLoadError(f"models entry {spec!r}: {expanded} is a file, not a checkpoint directory")
    elif _looks_like_path(spec):
        raise FileNotFoundError(f"models entry {spec!r}: no such checkpoint directory: {expanded}")
    else:
        kind, path, base = "hub", spec, None

    return kind, path, base


def load_eval_model(spec: str, dtype: str = "auto", device: str = "cpu", attn_implementation: str = "sdpa") -> LoadedModel:
    """Load ``spec`` (see the module docstring) onto ``device`` in eval mode."""
    from rlattn.models import resolve_model

    kind, path, base = locate_model(spec)
    if kind == "embedded":
        path = resolve_model(spec)
    try:
        if kind == "adapter":
            from peft import PeftModel

            base_loaded = load_eval_model(base, dtype=dtype, device="cpu", attn_implementation=attn_implementation)
            tok_source = path if any((Path(path) / f).is_file() for f in _TOKENIZER_FILES) else None
            tokenizer = _load_tokenizer(tok_source) if tok_source else base_loaded.tokenizer
            model = PeftModel.from_pretrained(base_loaded.model, path).merge_and_unload()
        else:
            tokenizer = _load_tokenizer(path)
            model = _load_causal_lm(path, dtype, attn_implementation)
    except ModelLoadError:
        raise  # the base model of an adapter failed: that error already names it
    except Exception as err:  # corrupt weights, bad config, hub/network failures, shape mismatches
        raise ModelLoadError(f"models entry {spec!r}: cannot load {kind} from {path}: {type(err).__name__}: {err}") from err
    model.to(device)
    model.eval()
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(spec=spec, kind=kind, path=str(path), base=base, model=model, tokenizer=tokenizer)
