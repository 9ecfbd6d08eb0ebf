"""The one structure every rollout backend returns, and the protocol a backend implements.

Why: the trainer must not care who sampled the reasoning traces. The ``transformers`` backend
(the policy's own ``generate``) and the ``vllm`` CPU engine both hand back a :class:`RolloutBatch`
— prompt and completion token ids, per-token *sampling* log-probs (the log-probabilities of the
sampled tokens under the distribution they were actually drawn from, i.e. after temperature /
top-k / top-p), and a finish reason per completion — and :meth:`RolloutBatch.to_trl` turns it
into the dict TRL's ``rollout_func`` hook must return (``prompt_ids``, ``completion_ids``,
``logprobs`` plus extra fields that TRL forwards to the reward functions).

Finish reasons: ``"stop"`` (an end-of-sequence / stop token was sampled; it is kept as the last
completion token, as TRL does), ``"length"`` (``max_tokens`` reached), ``"skipped"`` (the prompt
did not fit the engine's context and ``on_prompt_too_long="skip"``: the completion is a single
EOS token that is masked out of the loss through TRL's ``env_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

FINISH_REASONS = ("stop", "length", "skipped")


class RolloutError(RuntimeError):
    """A rollout backend failed in a way the caller should see (start-up, dead engine, timeout)."""


class PromptTooLongError(RolloutError, ValueError):
    """A prompt does not fit the engine's context (``max_model_len``) with room for one token."""


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample. ``temperature == 0`` means greedy. ``max_tokens`` bounds each completion."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"SamplingSpec.max_tokens={self.max_tokens!r} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingSpec.temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingSpec.top_p={self.top_p!r} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_trainer_args(cls, args) -> "SamplingSpec":
        """Read TRL's GRPOConfig sampling fields (temperature, top_p, top_k, ..., max_completion_length)."""
        top_k = getattr(args, "top_k", None)
        return cls(
            max_tokens=int(args.max_completion_length),
            temperature=float(args.temperature),
            top_p=float(getattr(args, "top_p", 1.0) or 1.0),
            top_k=int(top_k) if top_k not in (None, -1) else 0,
            min_p=float(getattr(args, "min_p", None) or 0.0),
            repetition_penalty=float(getattr(args, "repetition_penalty", 1.0) or 1.0),
        )


@dataclass
class RolloutBatch:
    """One completion per row; row ``i`` answers ``prompt_ids[i]``. Lists are ragged (no padding)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]  # sampling log-prob of each completion token
    finish_reasons: list[str]
    policy_version: int | None = None  # which policy version produced the batch (None: unknown)
    num_skipped: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.prompt_ids)
        for name in ("completion_ids", "logprobs", "finish_reasons"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RolloutBatch.{name} has {len(getattr(self, name))} rows, prompt_ids has {n}")
        for i, (c, lp, r) in enumerate(zip(self.completion_ids, self.logprobs, self.finish_reasons)):
            if len(c) != len(lp):
                raise ValueError(f"RolloutBatch row {i}: {len(c)} completion tokens but {len(lp)} log-probs")
            if not c:
                raise ValueError(f"RolloutBatch row {i}: empty completion (a backend must return at least one token)")
            if r not in FINISH_REASONS:
                raise ValueError(f"RolloutBatch row {i}: finish reason {r!r} is not one of {FINISH_REASONS}")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    def padded(self, pad_token_id: int) -> dict[str, torch.Tensor]:
        """Tensors: prompts left-padded, completions right-padded, with 0/1 masks.

        ``completion_mask`` is 0 on padding and on skipped rows. Shapes: prompt_* [B, P],
        completion_* / logprobs [B, T].
        """
        b = len(self)
        p = max(len(x) for x in self.prompt_ids)
        t = max(len(x) for x in self.completion_ids)
        prompt = torch.full((b, p), pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((b, p), dtype=torch.long)
        comp = torch.full((b, t), pad_token_id, dtype=torch.long)
        comp_mask = torch.zeros((b, t), dtype=torch.long)
        logps = torch.zeros((b, t), dtype=torch.float32)
        for i in range(b):
            pi, ci = self.prompt_ids[i], self.completion_ids[i]
            prompt[i, p - len(pi):] = torch.tensor(pi)
            prompt_mask[i, p - len(pi):] = 1
            comp[i, : len(ci)] = torch.tensor(ci)
            logps[i, : len(ci)] = torch.tensor(self.logprobs[i])
            if self.finish_reasons[i] != "skipped":
                comp_mask[i, : len(ci)] = 1
        return {"prompt_ids": prompt, "prompt_mask": prompt_mask, "completion_ids": comp,
                "completion_mask": comp_mask, "logprobs": logps}

    def to_trl(self) -> dict[str, Any]:
        """The dict TRL 1.16's ``rollout_func`` must return.

        Required: ``prompt_ids``, ``completion_ids``, ``logprobs`` (ragged lists). Extra fields are
        forwarded by TRL to the reward functions as keyword arguments (per-row lists), so they are
        prefixed: ``rollout_finish_reason``. ``env_mask`` (TRL's own key: 1 = model token that is
        trained on) is added only when rows were skipped, so a skipped row contributes no loss.
        """
        out: dict[str, Any] = {
            "prompt_ids": [list(x) for x in self.prompt_ids],
            "completion_ids": [list(x) for x in self.completion_ids],
            "logprobs": [list(x) for x in self.logprobs],
            "rollout_finish_reason": list(self.finish_reasons),
        }
        if self.num_skipped:
            out["env_mask"] = [[0] * len(c) if r == "skipped" else [1] * len(c)
                               for c, r in zip(self.completion_ids, self.finish_reasons)]
        return out


@runtime_checkable
class RolloutBackend(Protocol):
    """What the trainer needs from a generation backend.

    ``generate`` samples one completion per entry of ``prompt_ids`` (callers repeat a prompt G
    times for a group) and never blocks without bound. ``sync`` makes the backend sample from the
    current policy: a no-op for the transformers backend (it *is* the policy), a LoRA adapter or a
    weight reload for vLLM. ``close`` releases processes and memory.
    """

    name: str

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSpec) -> RolloutBatch: ...

    def sync(self, model, version: int) -> None: ...

    def close(self) -> None: ...
