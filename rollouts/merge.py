"""LoRA merged into copies of the base weights, for generators that should not pay for the adapter.

A LoRA policy generates through PEFT's extra matmuls at every decode step (measured: 26 % of the
transformers backend's generation time on the embedded model, batch 32, bf16). Both generators
that can skip them take the merged weights from here: the vLLM engine (its ``merged`` hand-over)
and the transformers backend (``merge_lora``). The policy itself is never merged in place, so it
picks up no rounding; only the generator's copy does.
"""

from __future__ import annotations

__all__ = ["merged_state_dict"]


def merged_state_dict(peft_model) -> dict:
    """The base model's state dict with the active LoRA adapter merged in, in checkpoint names.

    Each adapted weight becomes ``W + ΔW`` (``ΔW`` = PEFT's ``get_delta_weight``, summed in fp32,
    cast back to ``W``'s dtype) on a copy: ``peft_model`` is not modified. LoRA tensors are dropped,
    ``.base_layer.`` and ``.modules_to_save.<adapter>.`` are folded into the plain names, and tensors
    that share storage (tied embeddings) are written once under their first name.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    adapter = peft_model.active_adapter
    base = peft_model.get_base_model()
    lora_modules = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out, seen = {}, set()
    for key, tensor in base.state_dict().items():  # state_dict() tensors are detached
        if "lora_" in key or ".original_module." in key:
            continue
        if ".modules_to_save." in key:
            if f".modules_to_save.{adapter}." not in key:
                continue
            key = key.replace(f".modules_to_save.{adapter}.", ".")
        ptr = tensor.data_ptr()
        if ptr in seen:  # tied weights: once, under the first name
            continue
        seen.add(ptr)
        name = key
        if ".base_layer." in key:
            module_name, _, param = key.partition(".base_layer.")
            name = f"{module_name}.{param}"
            module = lora_modules.get(module_name)
            if module is not None and param == "weight" and adapter in module.lora_A:
                with torch.no_grad():
                    tensor = (tensor.float() + module.get_delta_weight(adapter).float()).to(tensor.dtype)
        out[name] = tensor.contiguous().clone()
    return out
