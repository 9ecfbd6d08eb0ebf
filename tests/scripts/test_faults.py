"""Faults lose nothing (issue #21, docs/runs.md): scripts/grpo.py in subprocesses on tiny:llama-h32-l2,
each test reproducing one fault of the probe.

A checkpoint cut short mid-save, a resume over the re-run step's records, a failed resume next to
an earlier interrupt save, two runs on one output_dir, Ctrl-C, a reward that sleeps, a reward that
always fails, a model path that does not exist, attn_layers out of range.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rlattn.runs import MARKER, checkpoint_status

ROOT = Path(__file__).resolve().parents[2]

REWARDS = '''
import time

from rlattn.testing import digit_reward  # noqa: F401


def broken_reward(completions, **kwargs):
    raise RuntimeError("boom: the grader is down")


def sleepy_reward(completions, **kwargs):
    time.sleep(30)
    return [1.0] * len(completions)
'''

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    (d / "fault_rewards.py").write_text(REWARDS)
    return d


def _cmd(out, extra):
    args = [
        str(ROOT / "recipes/anchor_credit.yaml"),
        "--model_name_or_path", "tiny:llama-h32-l2",
        "--use_peft", "false", "--dtype", "float32", "--bf16", "false",
        "--dataset_limit", "16", "--dataset_max_problem_chars", "200",
        "--reward_funcs", "fault_rewards:digit_reward", "--reward_weights", "1.0",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
        "--logging_steps", "1", "--attn_fai_horizon", "2", "8", "--learning_rate", "1e-3",
        "--save_total_limit", "10", "--seed", "3",
        # the layout these tests were written for: a generation every step, 4 records per step, TRL's generate
        "--gradient_accumulation_steps", "1", "--steps_per_generation", "1", "--credit_log_samples", "4",
        "--rollout_merge_lora", "false", "--dynamic_sampling", "false",
        "--output_dir", str(out),
    ] + list(extra)
    return [sys.executable, str(ROOT / "scripts/grpo.py")] + args


def _env(workdir):
    return dict(os.environ, PYTHONPATH=str(workdir), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def grpo(workdir, out, *extra, ok=True, timeout=600):
    done = subprocess.run(_cmd(out, extra), capture_output=True, text=True, timeout=timeout, env=_env(workdir),
                          cwd=str(workdir))
    if ok:
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    else:
        assert done.returncode != 0, (done.stdout[-3000:], done.stderr[-5000:])
    return done


def start_grpo(workdir, out, *extra):
    return subprocess.Popen(_cmd(out, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(workdir), cwd=str(workdir))


def record_steps(out) -> Counter:
    path = Path(out) / "rollouts.jsonl"
    if not path.is_file():
        return Counter()
    steps = Counter()
    for line in path.read_text().splitlines():
        try:
            steps[json.loads(line)["step"]] += 1
        except (ValueError, KeyError):
            pass
    return steps


def wait_for_step(proc, out, step, limit_s=300):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if record_steps(out)[step]:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no records of step {step} within {limit_s} s")


def losses(out):
    return {e["step"]: e["loss"] for e in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
            if "loss" in e}


@pytest.fixture(scope="module")
def three_steps(workdir):
    """3 steps, a checkpoint after each (checkpoint-1..3), 4 rollout records per step."""
    out = workdir / "three"
    grpo(workdir, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1")
    assert record_steps(out) == Counter({0: 4, 1: 4, 2: 4})
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---- item 1 (with item 8): kill -9 during a save ---------------------------------------------
def test_resume_last_skips_the_checkpoint_cut_short_and_resumes_from_the_last_complete(three_steps, tmp_path, workdir):
    out = _copy(three_steps, tmp_path / "run")
    cut = out / "checkpoint-3"  # killed after the model was written, before the rest
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", MARKER):
        (cut / name).unlink(missing_ok=True)
    done = grpo(workdir, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
                "--resume_from_checkpoint", "last")
    assert f"resuming from {out / 'checkpoint-2'}" in done.stderr
    assert "skipped checkpoint-3: missing trainer_state.json, optimizer.pt" in done.stderr
    assert record_steps(out) == Counter({0: 4, 1: 4, 2: 4})  # step 2 once, not twice
    assert checkpoint_status(cut).complete  # written again, whole, by the resumed run


# ---- item 8: the resumed step's records are not doubled --------------------------------------
def test_resume_keeps_each_steps_records_once(three_steps, tmp_path, workdir):
    out = _copy(three_steps, tmp_path / "run")
    shutil.rmtree(out / "checkpoint-3")
    grpo(workdir, out, "--max_steps", "3", "--save_strategy", "no", "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert record_steps(out) == Counter({0: 4, 1: 4, 2: 4})


# ---- item 3: a failed resume destroys nothing and saves nothing ------------------------------
def test_failed_resume_leaves_the_earlier_interrupt_save_alone(three_steps, tmp_path, workdir):
    out = _copy(three_steps, tmp_path / "run")
    earlier = out / "interrupted"  # an earlier Ctrl-C's save
    earlier.mkdir()
    before = '{"loss": 0.1, "step": 1}\n{"loss": 0.2, "step": 2}\n'
    (earlier / "metrics.jsonl").write_text(before)
    ckpt = out / "checkpoint-2"
    (ckpt / MARKER).unlink(missing_ok=True)  # an older checkpoint (no marker) whose optimizer state is corrupt
    (ckpt / "optimizer.pt").write_bytes(b"this is not a torch file" * 100)
    done = grpo(workdir, out, "--max_steps", "3", "--resume_from_checkpoint", str(ckpt), ok=False)
    assert sorted(p.name for p in earlier.iterdir()) == ["metrics.jsonl"]  # no weights written over it
    assert (earlier / "metrics.jsonl").read_text() == before
    assert not list(out.glob("interrupted-*")) and not list(out.glob(".tmp-*"))
    assert "nothing new to save" in done.stderr


# ---- item 2: two runs on one output_dir ------------------------------------------------------
def test_a_second_run_on_a_busy_output_dir_refuses_naming_the_first(tmp_path, workdir):
    out = tmp_path / "shared"
    first = start_grpo(workdir, out, "--max_steps", "500", "--save_strategy", "no")
    try:
        wait_for_step(first, out, 0)
        done = grpo(workdir, out, "--max_steps", "1", "--save_strategy", "no", ok=False)
        assert "OutputDirInUse" in done.stderr and f"pid {first.pid}" in done.stderr
        assert "another output_dir" in done.stderr and "--overwrite_output_dir" in done.stderr
        assert "load_model_and_tokenizer" not in done.stderr  # refused before the model loaded
    finally:
        first.kill()
        first.communicate()


# ---- item 7: Ctrl-C ---------------------------------------------------------------------------
def test_ctrl_c_saves_a_resumable_checkpoint_and_says_where(tmp_path, workdir):
    out = tmp_path / "run"
    proc = start_grpo(workdir, out, "--max_steps", "500", "--save_strategy", "no")
    try:
        wait_for_step(proc, out, 2)  # two optimizer steps done
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    saved = list(out.glob("interrupted-*"))
    assert len(saved) == 1, sorted(p.name for p in out.iterdir())
    saved = saved[0]
    step = int(saved.name.split("-")[1])
    assert step >= 2
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                 "metrics.jsonl", MARKER):
        assert (saved / name).is_file(), name
    assert checkpoint_status(saved).complete and not list(out.glob(".tmp-*"))
    assert f"--resume_from_checkpoint {saved}" in stderr and "KeyboardInterrupt at step" in stderr
    grpo(workdir, out, "--max_steps", str(step + 1), "--save_strategy", "no", "--resume_from_checkpoint", str(saved))
    assert step + 1 in losses(out)
    assert record_steps(out) == Counter({s: 4 for s in range(step + 1)})


# ---- item 4: a reward that sleeps ------------------------------------------------------------
def test_a_sleeping_reward_is_cut_at_its_bound(tmp_path, workdir):
    out = tmp_path / "run"
    done = grpo(workdir, out, "--max_steps", "2", "--save_strategy", "no",
                "--reward_funcs", "fault_rewards:sleepy_reward", "fault_rewards:digit_reward", "--reward_weights", "1", "1",
                "--reward_call_timeout_s", "1", "--reward_max_failed_steps", "0")
    # cut at the bound, not waited out (no wall-clock assertion: a loaded CI machine is slow anyway)
    assert done.stderr.count("reward 'sleepy_reward' did not return within reward_call_timeout_s=1 s") == 1
    logged = [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "rewards/sleepy_reward/failed_frac" in e]
    assert logged and all(e["rewards/sleepy_reward/failed_frac"] == 1.0 for e in logged)


# ---- item 5: a reward that fails on every sample ---------------------------------------------
def test_a_reward_failing_on_every_sample_stops_the_run_naming_it(tmp_path, workdir):
    out = tmp_path / "run"
    done = grpo(workdir, out, "--max_steps", "20", "--save_strategy", "no",
                "--reward_funcs", "fault_rewards:broken_reward", ok=False)
    assert "RewardFailedError" in done.stderr and "reward 'broken_reward' failed on every sample" in done.stderr
    assert "RuntimeError: boom: the grader is down" in done.stderr and "reward_max_failed_steps: 0" in done.stderr
    assert max(record_steps(out)) <= 2  # stopped at the third scoring call


# ---- item 6: a model path that does not exist ------------------------------------------------
def test_missing_model_path_says_the_path_does_not_exist(tmp_path, workdir):
    out = tmp_path / "run"
    done = grpo(workdir, out, "--max_steps", "1", "--model_name_or_path", "./no/such/dir", ok=False)
    assert f"{workdir}/no/such/dir (the path does not exist" in done.stderr
    assert "Repo id must be" not in done.stderr
    assert not out.exists()


# ---- item 9: attn_layers out of range --------------------------------------------------------
def test_attn_layers_out_of_range_fail_before_the_model_loads_naming_the_key(tmp_path, workdir):
    out = tmp_path / "run"
    done = grpo(workdir, out, "--max_steps", "1", "--attn_layers", "0", "7", ok=False)
    assert "attn_layers=[0, 7]: [7] out of range for 'tiny:llama-h32-l2', which has 2 layers" in done.stderr
    assert "AttentionStatsConfig" not in done.stderr and "load_model_and_tokenizer" not in done.stderr
    assert not out.exists()
