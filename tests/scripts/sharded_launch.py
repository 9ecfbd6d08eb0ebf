"""Test harness: ``scripts/grpo.py`` under ``accelerate launch``, recording what each rank's credit saw.

Used by ``tests/scripts/test_sharded.py`` only; run as ``sharded_launch.py scripts/grpo.py recipe.yaml
[--key value ...]`` in place of ``scripts/grpo.py``. It adds two test-only things, both outside
rlattn, then runs the real script unchanged:

``RLATTN_TEST_CPU_FSDP=1``
    accelerate 1.15 enters its FSDP branch only on an accelerator (``AcceleratorState.__init__``
    checks for MULTI_GPU/XPU/...). With ``distributed_type: FSDP`` and ``use_cpu: true`` it runs
    plain DDP (MULTI_CPU) without a word; without ``use_cpu`` each process trains alone. Here the
    state is switched to FSDP exactly as that branch does for a GPU, so accelerate's own FSDP2
    preparation (``fully_shard`` per decoder layer), gradient clipping, saving and loading run
    on CPU over gloo.
``RLATTN_TEST_DUMP=<dir>``
    After every training generation batch each rank saves ``<dir>/rank{r}-step{s}.pt``: the
    batch (prompt/completion ids and masks), the trainer's ``last_credit`` (γ, WAAD, FAI, mask),
    and evidence of sharding: how many parameters were held as shards (FSDP2 DTensor shards,
    ZeRO-3 partitions) when the batch was generated and when each statistics capture opened,
    and the q/k shapes the statistics saw.
"""

from __future__ import annotations

import os
import runpy
import sys

import torch

SWITCHED = []  # non-empty once the CPU-FSDP switch below has had to act (accelerate refused FSDP on CPU)


def _cpu_fsdp_shim():
    import accelerate.state as state
    from accelerate.utils import DistributedType

    original = state.AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # the FSDP branch of AcceleratorState.__init__, which accelerate skips on CPU
            SWITCHED.append(True)
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    state.AcceleratorState.__init__ = __init__


def _sharded_params(model) -> tuple[int, int]:
    """(parameters held as shards right now, all parameters)."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    sharded = sum(isinstance(p, DTensor) or str(getattr(p, "ds_status", "")).endswith("NOT_AVAILABLE") for p in params)
    return sharded, len(params)


def _dump_hooks(dump_dir: str):
    """Record each generation batch and the ``last_credit`` it produced, per rank.

    Works whichever path the trainer takes (statistics fused into the loss forward, piggybacked on
    TRL's old-log-prob pass, or an extra pass): the batch is taken when TRL generates it, γ when
    the training step that consumed it ends.
    """
    import rlattn.credit.capture as capture

    seen = {}
    open_capture = capture.capture_qk

    def capture_qk(model, layers, callback, *args, **kwargs):  # installed before the trainer imports it
        seen.setdefault("sharded_at_capture", []).append(_sharded_params(capture.unwrap_model(model)))

        def record(layer, q, k, scaling):
            seen.setdefault("qk_shapes", set()).add((layer, tuple(q.shape), tuple(k.shape)))
            return callback(layer, q, k, scaling)

        return open_capture(model, layers, record, *args, **kwargs)

    capture.capture_qk = capture_qk
    from rlattn.trainer import AttnCreditGRPOTrainer as cls

    generate, train_step = cls._generate_and_score_completions, cls.training_step

    def _generate_and_score_completions(self, inputs):
        if self.model.training:  # a new batch: its captures may run inside generate (extra pass, TRL's pass)
            seen.clear()
            seen["sharded_at_generation"] = _sharded_params(capture.unwrap_model(self.model))
        output = generate(self, inputs)
        if self.model.training:
            seen["batch"] = {k: output[k].detach().cpu() for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
            seen["step"] = int(self.state.global_step)
        return output

    def training_step(self, *args, **kwargs):
        loss = train_step(self, *args, **kwargs)
        credit = self.last_credit
        if credit is not None and "batch" in seen and seen.get("dumped") is not credit:
            seen["dumped"] = credit
            record = dict(seen["batch"])
            record.update({k: v.detach().cpu() for k, v in credit.items() if isinstance(v, torch.Tensor)})
            record.update(
                step=seen["step"], rank=self.accelerator.process_index, world=self.accelerator.num_processes,
                distributed_type=str(self.accelerator.distributed_type), model_class=type(self.model).__name__,
                wrapped_class=type(self.model_wrapped).__name__, path=credit.get("path"),
                qk_shapes=sorted(seen.get("qk_shapes", ())), sharded_at_capture=seen.get("sharded_at_capture", []),
                sharded_at_generation=seen["sharded_at_generation"], cpu_fsdp_switched=bool(SWITCHED),
            )
            os.makedirs(dump_dir, exist_ok=True)
            torch.save(record, os.path.join(dump_dir, f"rank{record['rank']}-step{record['step']}.pt"))
        return loss

    cls._generate_and_score_completions = _generate_and_score_completions
    cls.training_step = training_step


def main():
    if os.environ.get("RLATTN_TEST_CPU_FSDP") == "1":
        _cpu_fsdp_shim()
    if os.environ.get("RLATTN_TEST_DUMP"):
        _dump_hooks(os.environ["RLATTN_TEST_DUMP"])
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
