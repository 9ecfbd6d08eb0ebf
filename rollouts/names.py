"""The names the rollout backends answer to: one list, read by the configs and the evaluator.

Kept free of imports so that a config dataclass can check a name without loading any engine.
"""

#: ``rollout_backend`` / the evaluator's ``backend``: the policy's own generate, or vLLM.
BACKENDS = ("transformers", "vllm")
#: How rlattn's CPU vLLM engine receives a LoRA policy.
LORA_HANDOVERS = ("merged", "adapter")
