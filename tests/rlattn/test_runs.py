"""rlattn.runs and rlattn.cli.resolve_checkpoint: faults lose nothing (docs/runs.md).

Each test builds the fault by hand: a checkpoint cut short mid-save, two processes on one
output_dir, a resume over logs of the re-run step, a save that hits a full disk, a fault before the
first step, a model path that does not exist, attn_layers out of range.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlattn.cli import resolve_checkpoint, write_run_summary
from rlattn.rollouts.records import append_records, load_records, truncate_records
from rlattn.runs import (MARKER, CheckpointMarker, OutputDirInUse, check_model, checkpoint_status, lock_output_dir,
                         restart_logs, save_after_fault, write_marker)

ROOT = Path(__file__).resolve().parents[2]


# ---- checkpoints: complete or absent (issue #21, item 1) ------------------------------------
def _checkpoint(root: Path, step: int, files=("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"),
                marker=False) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for name in files:
        content = json.dumps({"global_step": step}) if name == "trainer_state.json" else "x" * (10 + step)
        (d / name).write_text(content)
    if marker:
        write_marker(d, step)
    return d


def test_resume_last_skips_a_checkpoint_cut_short_and_says_why(tmp_path, caplog):
    # kill -9 during the save of checkpoint-3: the model is there, trainer_state.json and optimizer.pt are not
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 3, files=("model.safetensors",))
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        got = resolve_checkpoint("last", str(tmp_path))
    assert Path(got).name == "checkpoint-2"
    text = caplog.text
    assert "checkpoint-2" in text and "skipped checkpoint-3" in text
    assert "trainer_state.json" in text and "optimizer.pt" in text


def test_marker_is_checked_file_by_file(tmp_path, caplog):
    _checkpoint(tmp_path, 1, marker=True)
    c2 = _checkpoint(tmp_path, 2, marker=True)
    assert checkpoint_status(c2).complete
    (c2 / "optimizer.pt").write_text("x")  # a full disk while it was rewritten: shorter than recorded
    status = checkpoint_status(c2)
    assert not status.complete and "optimizer.pt is 1 bytes" in status.reason
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        assert Path(resolve_checkpoint(True, str(tmp_path))).name == "checkpoint-1"
    (c2 / "scheduler.pt").unlink()
    assert "missing scheduler.pt" in checkpoint_status(c2).reason


def test_marker_lists_every_file_with_its_size(tmp_path):
    d = _checkpoint(tmp_path, 4)
    (d / "global_step4").mkdir()
    (d / "global_step4" / "shard.pt").write_text("abc")
    marker = json.loads(write_marker(d, 4).read_text())
    assert marker["global_step"] == 4
    assert marker["files"]["global_step4/shard.pt"] == 3 and MARKER not in marker["files"]
    assert set(marker["files"]) == {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json",
                                    "global_step4/shard.pt"}


def test_explicit_incomplete_checkpoint_fails_naming_what_is_missing_and_the_fix(tmp_path):
    _checkpoint(tmp_path, 2)
    bad = _checkpoint(tmp_path, 3, files=("model.safetensors", "trainer_state.json"))
    with pytest.raises(FileNotFoundError, match=r"missing optimizer\.pt.*Fix: resume from .*checkpoint-2"):
        resolve_checkpoint(str(bad), str(tmp_path))


def test_no_complete_checkpoint_at_all(tmp_path):
    _checkpoint(tmp_path, 1, files=("model.safetensors",))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint.*checkpoint-1: missing"):
        resolve_checkpoint("true", str(tmp_path))
    assert resolve_checkpoint(None, str(tmp_path)) is None and resolve_checkpoint("false", str(tmp_path)) is None


def test_resume_last_points_at_a_newer_interrupt_save(tmp_path, caplog):
    _checkpoint(tmp_path, 2, marker=True)
    save = _checkpoint(tmp_path, 5, marker=True).rename(tmp_path / "interrupted-5-20260101-120000")
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        assert Path(resolve_checkpoint("last", str(tmp_path))).name == "checkpoint-2"
    assert f"--resume_from_checkpoint {save}" in caplog.text
    shutil.rmtree(tmp_path / "checkpoint-2")
    with pytest.raises(FileNotFoundError, match=f"has no checkpoint-\\* dir; resume from {save}"):
        resolve_checkpoint("last", str(tmp_path))
    assert resolve_checkpoint(str(save), str(tmp_path)) == str(save)


def test_callback_writes_the_marker_and_drops_a_stale_one_before_a_rewrite(tmp_path):
    d = _checkpoint(tmp_path, 5, marker=True)
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=True)
    state = SimpleNamespace(global_step=5)
    cb = CheckpointMarker()
    cb.on_step_end(args, state, SimpleNamespace(should_save=True))  # the Trainer is about to write checkpoint-5 again
    assert not (d / MARKER).exists()
    (d / "extra.bin").write_text("new")
    cb.on_save(args, state, SimpleNamespace(should_save=False))
    assert "extra.bin" in json.loads((d / MARKER).read_text())["files"]
    assert cb.step_end_rng is not None and cb.step_end_rng[0] == 5


def test_write_run_summary_is_whole_or_absent(tmp_path):
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}]))
    path = write_run_summary(trainer, str(tmp_path))
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2]
    assert not list(tmp_path.glob(".metrics*"))


# ---- one run per output_dir (item 2) ---------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from types import SimpleNamespace
    from rlattn.runs import lock_output_dir
    try:
        lock_output_dir(SimpleNamespace(output_dir=sys.argv[1]), overwrite=sys.argv[2] == "1")
    except Exception as e:
        print("REFUSED", type(e).__name__, e, flush=True)
        sys.exit(3)
    print("LOCKED", flush=True)
    time.sleep(float(sys.argv[3]))
""")


def _start_holder(out: Path, overwrite=False, hold_s=60.0, env=None):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "1" if overwrite else "0", str(hold_s)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return p


def test_second_process_on_one_output_dir_refuses_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    first = _start_holder(out)
    try:
        assert first.stdout.readline().strip() == "LOCKED"
        second = _start_holder(out, hold_s=0)
        stdout, stderr = second.communicate(timeout=120)
        assert second.returncode == 3, (stdout, stderr)
        assert "OutputDirInUse" in stdout and f"pid {first.pid}" in stdout and "host" in stdout and "started" in stdout
        assert "another output_dir" in stdout and "overwrite_output_dir" in stdout
        # this test process is a second run too
        with pytest.raises(OutputDirInUse, match=f"pid {first.pid}"):
            lock_output_dir(SimpleNamespace(output_dir=str(out)))
    finally:
        first.kill()
        first.communicate()


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "run"
    first = _start_holder(out)
    assert first.stdout.readline().strip() == "LOCKED"
    first.kill()  # kill -9: no clean-up, the lock file stays
    first.communicate()
    assert (out / ".rlattn.lock").is_file()
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        lock = lock_output_dir(SimpleNamespace(output_dir=str(out)))
    try:
        assert "stale lock" in caplog.text and f"pid {first.pid}" in caplog.text
        assert json.loads((out / ".rlattn.lock").read_text())["pid"] == os.getpid()
        assert lock_output_dir(SimpleNamespace(output_dir=str(out))) is lock  # the same process again
    finally:
        lock.release()
    assert not (out / ".rlattn.lock").exists()


def test_overwrite_output_dir_takes_a_live_lock_over(tmp_path, caplog):
    out = tmp_path / "run"
    first = _start_holder(out)
    try:
        assert first.stdout.readline().strip() == "LOCKED"
        with caplog.at_level(logging.WARNING, logger="rlattn"):
            lock = lock_output_dir(SimpleNamespace(output_dir=str(out)), overwrite=True)
        assert "taking over" in caplog.text
        assert json.loads((out / ".rlattn.lock").read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        first.kill()
        first.communicate()


def test_only_rank_zero_takes_the_lock(tmp_path):
    out = tmp_path / "run"
    first = _start_holder(out)
    try:
        assert first.stdout.readline().strip() == "LOCKED"
        for rank, expect in (("1", 0), ("0", 3)):  # accelerate's rank 1 passes; a second rank 0 refuses
            env = dict(os.environ, RANK=rank, LOCAL_RANK=rank)
            p = _start_holder(out, hold_s=0, env=env)
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == expect, (rank, stdout, stderr)
    finally:
        first.kill()
        first.communicate()


def test_a_run_that_wrote_nothing_leaves_no_directory(tmp_path):
    out = tmp_path / "never"
    lock = lock_output_dir(SimpleNamespace(output_dir=str(out)))
    assert out.is_dir()
    lock.release()
    assert not out.exists()


# ---- append-only logs on resume (item 8) -----------------------------------------------------
def test_resume_truncates_rollouts_to_the_steps_inside_the_checkpoint(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    append_records(path, [{"step": s, "i": i} for s in range(4) for i in range(2)])
    with path.open("a") as f:
        f.write('{"step": 4, "i"')  # a write cut short by kill -9
    # checkpoint-2: optimizer steps 1 and 2, whose records carry step 0 and 1 (written before the step)
    restart_logs(tmp_path, resume_step=2)
    assert [r["step"] for r in load_records(path)] == [0, 0, 1, 1]
    assert not list(tmp_path.glob(".rollouts*"))  # the temporary file was renamed over it
    assert truncate_records(path, 2) == (4, 0)
    assert truncate_records(tmp_path / "none.jsonl", 0) == (0, 0)


def test_each_rank_truncates_its_own_file_and_a_fresh_run_sets_old_records_aside(tmp_path):
    append_records(tmp_path / "rollouts-rank1.jsonl", [{"step": s} for s in range(3)])
    restart_logs(tmp_path, resume_step=1, rank=1)
    assert [r["step"] for r in load_records(tmp_path / "rollouts-rank1.jsonl")] == [0]
    append_records(tmp_path / "rollouts.jsonl", [{"step": 0}])
    restart_logs(tmp_path, resume_step=None)
    assert not (tmp_path / "rollouts.jsonl").exists()
    aside = list(tmp_path.glob("rollouts.previous-*.jsonl"))
    assert len(aside) == 1 and load_records(aside[0]) == [{"step": 0}]


# ---- saves after a fault (items 3 and 7) -----------------------------------------------------
class FakeTrainer:
    """What save_after_fault uses of a Trainer; ``_save_checkpoint`` writes the files a real one does."""

    def __init__(self, step, fail_with=None):
        self.state = SimpleNamespace(global_step=step, log_history=[{"loss": 1.0, "step": step}], best_global_step=None,
                                     total_flos=0.0)
        self.accelerator = SimpleNamespace(is_main_process=True, num_processes=1)
        self.callback_handler = SimpleNamespace(callbacks=[])
        self.model = object()
        self.current_flos = 0
        self.fail_with = fail_with

    def _get_output_dir(self, trial=None):
        raise AssertionError("save_after_fault must point the save elsewhere")

    def _save_checkpoint(self, model, trial):
        d = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("")
        if self.fail_with is not None:
            raise self.fail_with
        (d / "config.json").write_text("{}")
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (d / name).write_text("w")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": self.state.global_step}))


def test_interrupt_save_is_resumable_new_and_says_where(tmp_path, caplog):
    earlier = tmp_path / "interrupted"  # an earlier Ctrl-C's save (the old layout) is never touched
    earlier.mkdir()
    (earlier / "metrics.jsonl").write_text('{"loss": 1}\n{"loss": 2}\n')
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        saved = save_after_fault(FakeTrainer(7), tmp_path, KeyboardInterrupt())
    assert saved.name.startswith("interrupted-7-") and checkpoint_status(saved).complete
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "metrics.jsonl", MARKER):
        assert (saved / name).is_file(), name
    assert f"--resume_from_checkpoint {saved}" in caplog.text and "KeyboardInterrupt at step 7" in caplog.text
    assert (earlier / "metrics.jsonl").read_text().count("\n") == 2
    again = save_after_fault(FakeTrainer(7), tmp_path, KeyboardInterrupt())
    assert again != saved and saved.is_dir()  # a second fault at the same step: a new directory
    assert not list(tmp_path.glob(".tmp-*"))


def test_full_disk_during_the_interrupt_save_leaves_nothing_that_looks_saved(tmp_path, caplog):
    _checkpoint(tmp_path, 2)
    full = OSError(errno.ENOSPC, "No space left on device")
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        assert save_after_fault(FakeTrainer(5, fail_with=full), tmp_path, KeyboardInterrupt()) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert "No space left on device" in caplog.text and "nothing was saved" in caplog.text
    assert "checkpoint-2" in caplog.text  # where to resume from instead


def test_a_fault_before_the_first_step_saves_nothing(tmp_path, caplog):
    (tmp_path / "interrupted").mkdir()
    (tmp_path / "interrupted" / "metrics.jsonl").write_text('{"loss": 1}\n')
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        # a failed resume: the state says step 4 (loaded from the checkpoint), no step was made since
        assert save_after_fault(FakeTrainer(4), tmp_path, RuntimeError("bad optimizer.pt"), start_step=4) is None
        assert save_after_fault(FakeTrainer(0), tmp_path, KeyboardInterrupt()) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interrupted"]
    assert (tmp_path / "interrupted" / "metrics.jsonl").read_text() == '{"loss": 1}\n'
    assert "nothing new to save" in caplog.text


def test_sharded_training_is_not_saved_after_a_fault(tmp_path, caplog):
    trainer = FakeTrainer(3)
    trainer.is_fsdp_enabled = True
    with caplog.at_level(logging.WARNING, logger="rlattn"):
        assert save_after_fault(trainer, tmp_path, KeyboardInterrupt()) is None
    assert "DeepSpeed/FSDP" in caplog.text and not list(tmp_path.iterdir())


# ---- checks before the model loads (items 6 and 9) -------------------------------------------
def _config(**kw):
    from rlattn.config import AttnCreditConfig

    return AttnCreditConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **kw)


def test_attn_layers_out_of_range_fail_from_the_config_before_weights_load(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("loaded weights before checking attn_layers"))
    model_args = SimpleNamespace(model_name_or_path="tiny:llama-h32-l2", model_revision=None)
    with pytest.raises(ValueError, match=r"attn_layers=\[0, 7\]: \[7\] out of range for 'tiny:llama-h32-l2', which has "
                                         r"2 layers \(0\.\.1\)") as info:
        check_model(model_args, _config(attn_layers=[0, 7]))
    assert "AttentionStatsConfig" not in str(info.value)
    check_model(model_args, _config(attn_layers=[1]))
    check_model(model_args, _config(attn_layers=[9], credit_strategy="uniform"))  # reads no attention


def test_missing_local_model_path_says_it_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_args = SimpleNamespace(model_name_or_path="./no/such/dir", model_revision=None)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/no/such/dir .the path does not exist"):
        check_model(model_args, _config())


def test_a_hub_looking_name_that_is_no_local_dir_says_so(tmp_path, monkeypatch):
    from rlattn.models import ModelLoadError, load_model_and_tokenizer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=f"as a local path: no such directory {tmp_path}/nosuch/model"):
        load_model_and_tokenizer("nosuch/model")
    check_model(SimpleNamespace(model_name_or_path="nosuch/model", model_revision=None), _config())  # left to the loader


# ---- set_torch_threads: accelerate launch exports OMP_NUM_THREADS=1; a CPU run gets its cores ----

def test_cpu_threads_are_the_cores_per_local_process(monkeypatch):
    import torch

    from rlattn.runs import set_torch_threads

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch exports
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        torch.set_num_threads(1)
        assert set_torch_threads(SimpleNamespace(use_cpu=True, torch_threads=0)) == cores
        assert torch.get_num_threads() == cores
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more processes than cores: one each
        assert set_torch_threads(SimpleNamespace(use_cpu=True, torch_threads=0)) == 1
        assert set_torch_threads(SimpleNamespace(use_cpu=True, torch_threads=3)) == 3  # explicit wins
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_torch_threads_must_be_a_non_negative_int():
    from rlattn.cli import parse_grpo_args

    with pytest.raises(ValueError, match=r"torch_threads=-1 must be an int >= 0"):
        parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), "--torch_threads", "-1"])


def test_a_swallowed_ctrl_c_is_raised_again_at_the_step_end():
    # Python drops a KeyboardInterrupt that lands inside a __del__ ("Exception ignored in"); the guard
    # of run_training raises it again at the next step end, so the run still stops and saves.
    import signal

    from rlattn.runs import _ctrl_c_cannot_be_swallowed

    class FakeTrainer:
        def __init__(self):
            self.callbacks = []

        def add_callback(self, cb):
            self.callbacks.append(cb)

        def remove_callback(self, cb):
            self.callbacks.remove(cb)

    trainer = FakeTrainer()
    before = signal.getsignal(signal.SIGINT)
    with _ctrl_c_cannot_be_swallowed(trainer):
        (guard,) = trainer.callbacks
        guard.on_step_end(None, None, None)  # no Ctrl-C yet: nothing happens
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass  # swallowed, as a finaliser would
        with pytest.raises(KeyboardInterrupt, match="swallowed"):
            guard.on_step_end(None, None, None)
    assert trainer.callbacks == [] and signal.getsignal(signal.SIGINT) is before
