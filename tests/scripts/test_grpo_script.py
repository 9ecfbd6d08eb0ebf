"""scripts/grpo.py end to end in subprocesses, on a tiny model saved to disk.

Smoke run (2 steps, outputs and finite loss), exact resume (4 steps == 2 + 2 resumed, in logged
losses), and a 2-process CPU run through ``accelerate launch``.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# a user's own reward module on PYTHONPATH, reached by a dotted path from the recipe
REWARD_MODULE = "from rlattn.testing import digit_reward  # noqa: F401\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rlattn.testing import tiny_model

    d = tmp_path_factory.mktemp("tiny")
    model, tok = tiny_model("qwen3", num_layers=3, seed=0, attn_implementation="sdpa")
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "toy_rewards.py").write_text(REWARD_MODULE)
    return d


def run_grpo(tiny_dir, out_dir, *extra, launcher=None, timeout=900):
    args = [
        str(ROOT / "recipes/anchor_credit.yaml"),
        "--model_name_or_path", str(tiny_dir / "model"),
        "--use_peft", "false",
        "--dtype", "float32",
        "--bf16", "false",
        "--dataset_limit", "16",
        "--dataset_max_problem_chars", "400",
        "--reward_funcs", "toy_rewards:digit_reward",
        "--reward_weights", "1.0",
        "--per_device_train_batch_size", "4",
        "--num_generations", "4",
        "--max_completion_length", "16",
        "--logging_steps", "1",
        "--output_dir", str(out_dir),
        "--attn_fai_horizon", "2", "8",
        # the layout these tests were written for: a generation every step, 4 records per step, TRL's generate
        "--gradient_accumulation_steps", "1", "--steps_per_generation", "1", "--credit_log_samples", "4",
        "--rollout_merge_lora", "false", "--dynamic_sampling", "false",
        "--learning_rate", "1e-3",
    ] + list(extra)
    cmd = (launcher or [sys.executable]) + [str(ROOT / "scripts/grpo.py")] + args
    env = dict(os.environ, PYTHONPATH=str(tiny_dir), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tiny_dir))
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    return out


def logged(out_dir):
    return [json.loads(l) for l in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir):
    return {e["step"]: e["loss"] for e in logged(out_dir) if "loss" in e}


@pytest.mark.slow
def test_smoke_two_steps_writes_outputs(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run_grpo(tiny_dir, out, "--max_steps", "2", "--save_strategy", "no")
    assert (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    ls = losses(out)
    assert len(ls) == 2 and all(math.isfinite(v) for v in ls.values())
    entries = logged(out)
    assert any("credit/gamma_mean" in e for e in entries)
    rollouts = (out / "rollouts.jsonl").read_text().splitlines()
    assert rollouts and "gamma" in json.loads(rollouts[0])


@pytest.mark.slow
def test_resume_continues_exactly(tiny_dir, tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    common = ("--save_strategy", "steps", "--save_steps", "2", "--seed", "3")
    run_grpo(tiny_dir, full, "--max_steps", "4", *common)
    run_grpo(tiny_dir, half, "--max_steps", "2", *common)
    assert (half / "checkpoint-2").is_dir()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (half / "checkpoint-2" / name).is_file(), name
    run_grpo(tiny_dir, half, "--max_steps", "4", "--resume_from_checkpoint", "last", *common)
    a, b = losses(full), losses(half)
    assert sorted(a) == [1, 2, 3, 4]
    assert [b[s] for s in (3, 4)] == [a[s] for s in (3, 4)], (a, b)


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate(tiny_dir, tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate_configs/cpu_2proc.yaml")]
    run_grpo(tiny_dir, out, "--max_steps", "2", "--save_strategy", "no", "--per_device_train_batch_size", "2",
             launcher=launcher)
    ls = losses(out)
    assert len(ls) == 2 and all(math.isfinite(v) for v in ls.values())
    assert (out / "rollouts.jsonl").is_file() and (out / "rollouts-rank1.jsonl").is_file()
