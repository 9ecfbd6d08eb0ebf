"""Sharded training on 2 CPU processes (gloo): FSDP2 and DeepSpeed ZeRO-2/3, with coupled credit.

``scripts/grpo.py`` runs under ``accelerate launch`` through tests/scripts/sharded_launch.py, which
records, per rank and generation batch, the batch, the trainer's ``last_credit`` and how sharded
the parameters were. For each configuration:

- the run is really sharded: accelerate's distributed type is FSDP / DEEPSPEED, and at rest and
  when each statistics pass begins the parameters are FSDP2 DTensor shards or ZeRO-3 partitions
  (ZeRO-2 keeps them whole), so the pass gathers them itself;
- the statistics saw each rank's rows whole: every selected layer's captured q/k had all query /
  KV heads and the full sequence;
- γ, WAAD and FAI of each rank equal those computed in this process, unsharded, on the same rows
  with the weights that generated them (the initial model, or ``checkpoint-<step>``);
- the loss of every step equals the 2-process DDP run's (the loss pass is unsharded math too);
- checkpoints save and resume: 2 steps, then a resumed run to 4, equal the DDP run's 4 steps in
  every loss and in the final weights.
  The resumed half takes the statistics by an extra pass (``credit_fused: false``), the first
  half in the loss forward (the default), and ZeRO-2 runs with ``steps_per_generation: 2``, so
  the statistics are captured in TRL's old-log-prob pass (the GPU recipes' path).

FSDP needs a test-only switch: accelerate 1.15 runs ``distributed_type: FSDP`` on CPU as plain DDP
(see sharded_launch.py and docs/distributed.md); the test checks that the switch was still needed.
DeepSpeed runs on CPU as it is; its tests skip when deepspeed is not installed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("sharded_launch.py")
CONFIGS = ROOT / "recipes" / "accelerate_configs"
HEADS, KV_HEADS, LAYERS = 4, 2, 3


def grpo_args(model_dir: Path, out: Path, peft: bool, *extra) -> list[str]:
    return [
        str(ROOT / "recipes/anchor_credit.yaml"),
        "--model_name_or_path", str(model_dir), "--use_peft", str(peft).lower(),
        "--dtype", "float32", "--bf16", "false",
        "--dataset_limit", "16", "--dataset_max_problem_chars", "400",
        "--reward_funcs", "rlattn.testing:digit_reward", "--reward_weights", "1.0",
        "--per_device_train_batch_size", "2", "--num_generations", "4", "--max_completion_length", "16",
        "--attn_fai_horizon", "2", "8", "--learning_rate", "1e-3", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "10",
        "--output_dir", str(out),
        # the layout these tests were written for: a generation every step, 4 records per step, TRL's generate
        "--gradient_accumulation_steps", "1", "--steps_per_generation", "1", "--credit_log_samples", "4",
        "--rollout_merge_lora", "false", "--dynamic_sampling", "false",
    ] + list(extra)


def launch(config: Path, tiny: Path, out: Path, peft: bool, *extra, env=None, timeout=600):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), str(HARNESS),
           str(ROOT / "scripts/grpo.py")] + grpo_args(tiny / "model", out, peft, *extra)
    pythonpath = os.pathsep.join(p for p in (str(tiny), os.environ.get("PYTHONPATH")) if p)
    full_env = dict(os.environ, PYTHONPATH=pythonpath, TOKENIZERS_PARALLELISM="false", RLATTN_TEST_DUMP=str(out / "dump"),
                    **(env or {}))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(tiny))
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-6000:])
    return res


def losses(out: Path) -> dict[int, float]:
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rlattn.testing import tiny_model

    d = tmp_path_factory.mktemp("sharded")
    model, tok = tiny_model("qwen3", num_layers=LAYERS, num_heads=HEADS, num_kv_heads=KV_HEADS, seed=0,
                            attn_implementation="sdpa")
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d


@pytest.fixture(scope="module")
def ddp_run(tiny):
    """The output dir of a 4-step 2-process DDP run, per LoRA/full fine-tuning (run once, on demand)."""

    def get(peft: bool) -> Path:
        out = tiny / f"ddp-{'lora' if peft else 'full'}"
        if not (out / "metrics.jsonl").is_file():
            launch(CONFIGS / "cpu_2proc.yaml", tiny, out, peft, "--max_steps", "4", "--save_strategy", "no")
        return out

    return get


def final_weights(out: Path, peft: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / ("adapter_model.safetensors" if peft else "model.safetensors"))


def zero3_config(tmp: Path) -> Path:
    """zero3_cpu_2proc.yaml with a DeepSpeed JSON that shards every parameter, however small."""
    ds = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
                                "stage3_prefetch_bucket_size": 0, "stage3_gather_16bit_weights_on_model_save": True},
          "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"}
    (tmp / "ds_zero3.json").write_text(json.dumps(ds))
    cfg = yaml.safe_load((CONFIGS / "zero3_cpu_2proc.yaml").read_text())
    cfg["deepspeed_config"] = {"deepspeed_config_file": str(tmp / "ds_zero3.json"), "zero3_init_flag": True}
    cfg.pop("mixed_precision", None)  # accelerate refuses it next to a DeepSpeed JSON (which says "auto")
    path = tmp / "zero3_cpu_2proc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --------------------------------------------------------------------------- the single-process reference


def _load_policy(tiny: Path, out: Path, step: int, peft: bool):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny / "model", dtype=torch.float32, attn_implementation="sdpa")
    if step == 0:
        return base.eval()
    ckpt = out / f"checkpoint-{step}"
    if peft:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, ckpt).eval()
    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa").eval()


def reference_credit(model, rec, stats_cfg, credit_cfg):
    """WAAD, FAI [B, T] and γ of one rank's rows, computed here without sharding."""
    from rlattn.credit import compute_attention_stats, get_credit_fn

    P = rec["prompt_ids"].size(1)
    ids = torch.cat([rec["prompt_ids"], rec["completion_ids"]], 1)  # [B, P+T]
    am = torch.cat([rec["prompt_mask"], rec["completion_mask"]], 1)  # [B, P+T]
    resp = torch.cat([torch.zeros_like(rec["prompt_mask"]), rec["completion_mask"]], 1).bool()  # [B, P+T]
    stats = compute_attention_stats(model, ids, am, resp, stats_cfg)
    waad, fai = stats.waad[:, P:], stats.fai[:, P:]  # [B, T]
    gamma = get_credit_fn(credit_cfg.strategy)(waad=waad, fai=fai, mask=rec["mask"], config=credit_cfg)  # [B, T]
    return waad, fai, gamma


def check_credit(tiny: Path, out: Path, peft: bool, *extra, distributed: str, params_sharded: bool):
    """Every dumped rank/step: really sharded, full q/k seen, γ = the single-process γ."""
    from rlattn.cli import parse_grpo_args

    # the same recipe and overrides (one process here: 4 rows per device so that 4 generations fit)
    _, targs, _ = parse_grpo_args(grpo_args(tiny / "model", out, peft, *extra, "--per_device_train_batch_size", "4"))
    stats_cfg, credit_cfg = targs.attention_stats_config(), targs.credit_config()
    layers = stats_cfg.resolve_layers(LAYERS)
    records = [torch.load(p, weights_only=False) for p in sorted((out / "dump").glob("rank*-step*.pt"))]
    steps = sorted({r["step"] for r in records})
    assert steps and all({r["rank"] for r in records if r["step"] == s} == {0, 1} for s in steps), sorted(
        (r["rank"], r["step"]) for r in records)
    paths, models = set(), {}
    for rec in records:
        where = f"rank {rec['rank']} step {rec['step']}"
        assert rec["world"] == 2 and rec["distributed_type"] == f"DistributedType.{distributed}", (where, rec["distributed_type"])
        sharded, total = rec["sharded_at_generation"]
        assert (sharded == total) if params_sharded else (sharded == 0), (where, "parameters sharded at rest", sharded, total)
        at_capture = [s for s, _ in rec["sharded_at_capture"]]  # the statistics' forward had to gather them itself
        assert at_capture and (all(at_capture) if params_sharded else not any(at_capture)), (where, at_capture)
        N = rec["prompt_ids"].size(1) + rec["completion_ids"].size(1)
        seen = {layer for layer, q, k in rec["qk_shapes"]}
        assert seen == set(layers), (where, seen)
        for layer, q, k in rec["qk_shapes"]:  # [b, H, N, D] and [b, KV, N, D]: every head, the whole sequence
            assert q[1] == HEADS and k[1] == KV_HEADS and q[2] == k[2] == N, (where, layer, q, k)
        for step in {0, rec["step"]} - set(models):
            models[step] = _load_policy(tiny, out, step, peft)
        waad, fai, gamma = reference_credit(models[rec["step"]], rec, stats_cfg, credit_cfg)
        torch.testing.assert_close(rec["waad"], waad, atol=1e-5, rtol=0, msg=f"WAAD differs on {where}")
        torch.testing.assert_close(rec["fai"], fai, atol=1e-5, rtol=0, equal_nan=True, msg=f"FAI differs on {where}")
        assert torch.equal(rec["gamma"], gamma), (where, rec["gamma"], gamma)
        if rec["step"] > 0:  # the comparison can tell the weights apart: the step's checkpoint mattered
            initial = reference_credit(models[0], rec, stats_cfg, credit_cfg)[0]
            assert (initial - waad).abs().max() > 1e-7, (where, "WAAD of the initial weights equals the checkpoint's")
        paths.add(rec["path"])
    return records, paths


def assert_losses_equal(got: dict, want: dict, steps):
    assert sorted(got) == list(steps), (got, want)
    for s in steps:
        assert math.isfinite(got[s]) and got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-7), (s, got, want)


# --------------------------------------------------------------------------- the configurations


def run_and_resume(tiny, out, config, peft, ddp_run, distributed, params_sharded, env=None, resume=True):
    """2 steps (statistics in the loss forward), then, if ``resume``, a resumed run to 4 (extra pass);
    losses, and at the end the weights, equal the DDP run's."""
    launch(config, tiny, out, peft, "--max_steps", "2", env=env)
    ckpt = out / "checkpoint-2"
    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "scheduler.pt").is_file(), sorted(os.listdir(ckpt))
    assert (ckpt / ("adapter_model.safetensors" if peft else "model.safetensors")).is_file(), sorted(os.listdir(ckpt))
    first, paths = check_credit(tiny, out, peft, "--max_steps", "2", distributed=distributed, params_sharded=params_sharded)
    assert paths == {"fused"}, paths
    ddp = ddp_run(peft)
    want = losses(ddp)
    if not resume:
        assert_losses_equal(losses(out), want, [1, 2])
        return first
    launch(config, tiny, out, peft, "--max_steps", "4", "--resume_from_checkpoint", "last", "--credit_fused", "false", env=env)
    records, paths = check_credit(tiny, out, peft, "--max_steps", "4", "--credit_fused", "false",
                                  distributed=distributed, params_sharded=params_sharded)
    assert paths == {"fused", "extra"}, paths
    assert_losses_equal(losses(out), want, [1, 2, 3, 4])
    got, ref = final_weights(out, peft), final_weights(ddp, peft)
    # FSDP's full state dict also writes the tied lm_head.weight, which save_pretrained leaves out
    assert set(ref) <= set(got) and set(got) - set(ref) <= {"lm_head.weight"}, (sorted(got), sorted(ref))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=1e-5, msg=f"final {name} differs from DDP's")
    return records


@pytest.mark.slow
@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_fsdp2_two_cpu_processes(tiny, tmp_path, ddp_run, peft):
    records = run_and_resume(tiny, tmp_path / "fsdp", CONFIGS / "fsdp_cpu_2proc.yaml", peft, ddp_run, "FSDP",
                             params_sharded=True, env={"RLATTN_TEST_CPU_FSDP": "1"})
    assert all(r["model_class"].startswith("FSDP") for r in records), {r["model_class"] for r in records}
    assert all(r["cpu_fsdp_switched"] for r in records), (
        "accelerate now enters FSDP on CPU by itself: drop the switch in sharded_launch.py and update docs/distributed.md")


@pytest.mark.slow
@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_deepspeed_zero3_two_cpu_processes(tiny, tmp_path, ddp_run, peft):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (bash scripts/bootstrap.sh --test-deps installs it)")
    records = run_and_resume(tiny, tmp_path / "zero3", zero3_config(tmp_path), peft, ddp_run, "DEEPSPEED",
                             params_sharded=True, resume=not peft)
    assert all(r["wrapped_class"] == "DeepSpeedEngine" for r in records)


@pytest.mark.slow
def test_deepspeed_zero2_with_statistics_in_trls_old_logprob_pass(tiny, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (bash scripts/bootstrap.sh --test-deps installs it)")
    out = tmp_path / "zero2"
    extra = ("--max_steps", "2", "--steps_per_generation", "2")
    launch(CONFIGS / "zero2_cpu_2proc.yaml", tiny, out, False, *extra)
    records, paths = check_credit(tiny, out, False, *extra, distributed="DEEPSPEED", params_sharded=False)
    assert paths == {"piggyback"}, paths
    assert (out / "checkpoint-2" / "global_step2").is_dir(), sorted(os.listdir(out / "checkpoint-2"))
    ls = losses(out)
    assert sorted(ls) == [1, 2] and all(math.isfinite(v) for v in ls.values())
