"""Score only the completion tokens in TRL's fused LM head on the CPU.

Why: TRL's loss passes call ``model(..., labels=labels, fused_lm_head=True)``, whose LM head
projects the hidden states onto the vocabulary (576 x 49,152 for the embedded model) in tiles. On
Triton devices it projects only the positions whose label is not ``-100``; everywhere else it
projects *every* position and zeroes the masked ones afterwards (TRL 1.16, ``add_fused_lm_head``:
"the number of valid positions would change the tile shapes on every batch and trigger a
recompilation", a concern of compiled backends such as Neuron). On the CPU nothing is compiled, so
that is pure waste: a whole-row pass projects the prompt too, and every pass projects the padding
after short completions. In the main recipe the head was ~20 % of a step's CPU time, about half of
it spent on padding (docs/benchmarks.md, ``step_compact_head``).

How: while :func:`compact_cpu_lm_head` is entered, TRL's predicate that decides the compaction
(``trl.trainer.utils._use_triton``, read by the fused forward only) also answers yes for CPU
tensors. The Triton kernels keep their own copy of the predicate, so the tiles still run in torch.
The result is TRL's own compact path: ``hidden[mask]`` through the same kernel, scattered back with
zeros at the masked positions. Log-probs, entropies and gradients equal the full projection up to
float round-off (tested, ``tests/rlattn/test_compact_head.py``). The backward needs no patch: it runs
on the compact tensors autograd saved.

The predicate is private, so TRL is pinned (``trl>=1.16,<1.17``) and the test checks that the fused
forward still reads it; if a TRL release moved it, the context would do nothing (every position
scored, as before) and that test would say so.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def compact_cpu_lm_head(enabled: bool = True):
    """Within the block, TRL's fused LM head projects only labelled positions of CPU tensors."""
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - TRL is a dependency
        trl_utils = None
    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None or getattr(original, "_rlattn_compact", False):
        yield  # off, an unknown TRL, or already inside the block
        return

    def use_compact(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    use_compact._rlattn_compact = True
    trl_utils._use_triton = use_compact
    try:
        yield
    finally:
        trl_utils._use_triton = original
