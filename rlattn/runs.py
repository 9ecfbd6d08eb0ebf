"""A training run that loses nothing on a fault (docs/runs.md): the output-dir lock, complete-or-absent
checkpoints, saves after an interrupt or a failure, and the train/save sequence the scripts share.

- :func:`lock_output_dir` (called right after parsing, before the model loads): one run per
  ``output_dir``. The lock is an ``flock`` on ``<output_dir>/.rlattn.lock``, so the kernel releases it
  when its holder dies, ``kill -9`` included. A second run refuses at start, naming the holder (pid,
  host, start time) and the fix; a lock left by a dead process is taken over with a warning. Only
  the main process (``RANK`` 0) takes it.
- :func:`check_model` (right after parsing too): a model path that does not exist, and
  ``attn_layers`` outside the model's layers, fail from the model's config, before any weight loads.
- :class:`CheckpointMarker`, a ``TrainerCallback``: once the Trainer has written ``checkpoint-N/``
  (every process done), the main process writes ``rlattn_complete.json`` into it, listing every file
  and its size, fsynced after the files themselves. A directory is not made atomic by this, but a
  save cut short (``kill -9``, a crash, a full disk) has no marker, or files that differ from it, and
  :func:`checkpoint_status` says so. ``rlattn.cli.resolve_checkpoint`` resumes from the newest
  complete checkpoint.
- :func:`set_torch_threads` (right after parsing): on CPU, torch gets the cores of this process's
  share of the machine, whatever OMP_NUM_THREADS `accelerate launch` exported.
- :func:`run_training`: resolve the checkpoint, bound the rewards (``reward_call_timeout_s``,
  ``reward_max_failed_steps``), cut the append-only logs back to the resumed step, train; on any
  exception (Ctrl-C included) :func:`save_after_fault` writes a resumable
  ``interrupted-<step>-<time>/`` under a temporary name, renames it when complete and says where it
  went, then the exception goes on. Then the final save: model, trainer state, ``metrics.jsonl``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import time

from rlattn.utils import write_atomic
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("rlattn")

__all__ = ["CheckpointMarker", "CheckpointStatus", "MARKER", "OutputDirInUse", "OutputDirLock", "check_model",
           "checkpoint_status", "checkpoint_step", "list_checkpoints", "list_interrupt_saves", "lock_output_dir", "restart_logs",
           "run_training", "save_after_fault", "write_marker"]

#: the completion marker inside a checkpoint directory
MARKER = "rlattn_complete.json"
#: the output-dir lock file
LOCK_FILE = ".rlattn.lock"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# what a resume needs, for checkpoints written before the marker existed
_STATE_FILE = "trainer_state.json"


# --------------------------------------------------------------------------------------------
# Durable writes
# --------------------------------------------------------------------------------------------
def _fsync_path(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


_write_atomic = write_atomic  # rlattn.utils: the one atomic rewrite


# --------------------------------------------------------------------------------------------
# Checkpoints: the completion marker and what "complete" means
# --------------------------------------------------------------------------------------------
def _files_under(root: Path) -> dict[str, int]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MARKER and not p.name.startswith(f".{MARKER}"):
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


def write_marker(checkpoint_dir: str | os.PathLike, global_step: int | None = None) -> Path:
    """Write ``rlattn_complete.json`` (every file under ``checkpoint_dir`` and its size) after fsyncing
    those files, so the marker never outlives data that did not reach the disk."""
    root = Path(checkpoint_dir)
    files = _files_under(root)
    for name in files:
        _fsync_path(root / name)
    for d in {(root / name).parent for name in files} | {root}:
        _fsync_path(d, directory=True)
    marker = {"format": 1, "global_step": global_step, "written": _now_iso(), "files": files}
    _write_atomic(root / MARKER, json.dumps(marker, indent=1))
    return root / MARKER


def _remove_marker(checkpoint_dir: Path) -> None:
    """A checkpoint about to be (re)written is not complete until its new marker is."""
    try:
        (checkpoint_dir / MARKER).unlink()
        _fsync_path(checkpoint_dir, directory=True)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class CheckpointStatus:
    """Whether a checkpoint directory holds everything a resume needs; ``reason`` says why (not)."""

    complete: bool
    reason: str
    missing: tuple[str, ...] = ()


def _has_optimizer_state(root: Path) -> bool:
    return ((root / "optimizer.pt").is_file() or any(p.is_dir() for p in root.glob("global_step*"))  # DeepSpeed
            or any(root.glob("optimizer_0*")))  # FSDP, sharded state dict


def checkpoint_status(path: str | os.PathLike) -> CheckpointStatus:
    """Complete when its completion marker is there and every file it lists has its recorded size.

    A checkpoint written before rlattn wrote markers counts as complete when ``trainer_state.json``
    (the Trainer writes it last) parses and the optimizer state (``optimizer.pt``, or DeepSpeed's
    ``global_step*/``, or FSDP's ``optimizer_0*``) is present.
    """
    root = Path(path)
    if not root.is_dir():
        return CheckpointStatus(False, f"{root} is not a directory", (str(root),))
    marker = root / MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return CheckpointStatus(False, f"its completion marker {MARKER} is unreadable", (MARKER,))
        missing = tuple(n for n in files if not (root / n).is_file())
        if missing:
            return CheckpointStatus(False, f"missing {', '.join(missing)} (listed in its completion marker)", missing)
        wrong = [f"{n} is {(root / n).stat().st_size} bytes, the marker says {size}" for n, size in files.items()
                 if (root / n).stat().st_size != size]
        if wrong:
            return CheckpointStatus(False, "its files differ from its completion marker (" + "; ".join(wrong) + ")",
                                    tuple(w.split(" ")[0] for w in wrong))
        if _STATE_FILE not in files:
            return CheckpointStatus(False, f"no {_STATE_FILE} (a model-only save, which a run cannot resume from)",
                                    (_STATE_FILE,))
        return CheckpointStatus(True, f"complete ({MARKER} matches its {len(files)} files)")
    missing = []
    if not (root / _STATE_FILE).is_file():
        missing.append(_STATE_FILE)
    if not _has_optimizer_state(root):
        missing.append("optimizer.pt")
    if missing:
        return CheckpointStatus(False, f"missing {', '.join(missing)} and no completion marker {MARKER}: a save cut "
                                       "short (killed, crashed or out of disk)", tuple(missing))
    try:
        int(json.loads((root / _STATE_FILE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return CheckpointStatus(False, f"{_STATE_FILE} is unreadable (a save cut short)", (_STATE_FILE,))
    return CheckpointStatus(True, f"complete by the older rule (no {MARKER}; {_STATE_FILE} and the optimizer state "
                                  "present)")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` directories of ``output_dir``, newest (largest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]


def list_interrupt_saves(output_dir: str | os.PathLike) -> list[Path]:
    """``interrupted-<step>-<time>`` directories of ``output_dir`` (saves after a fault), newest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name, p) for p in root.iterdir()
             if p.is_dir() and (m := re.match(r"^interrupted-(\d+)-", p.name))]
    return [p for _, _, p in sorted(found, reverse=True)]


def checkpoint_step(path: str | os.PathLike) -> int:
    """The ``global_step`` recorded in a checkpoint's ``trainer_state.json``."""
    return int(json.loads((Path(path) / _STATE_FILE).read_text())["global_step"])


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rng_snapshot() -> dict:
    import random

    import numpy as np
    import torch

    snap = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snap["cuda"] = torch.cuda.random.get_rng_state_all()
    return snap


def _rng_restore(snap: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(snap["python"])
    np.random.set_state(snap["numpy"])
    torch.random.set_rng_state(snap["cpu"])
    if "cuda" in snap:
        torch.cuda.random.set_rng_state_all(snap["cuda"])


def _make_checkpoint_marker():
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Writes the completion marker into each ``checkpoint-N/`` once every process has written its part,
        and removes a stale marker before the Trainer writes into an existing ``checkpoint-N/`` again.

        It also keeps the random-number state as of the end of the last optimizer step (a few KB), so that a
        save after a fault in the middle of a step records the state a checkpoint at that step would have
        (:func:`save_after_fault`), and the resumed run draws what an uninterrupted one draws.
        """

        def __init__(self):
            self.step_end_rng: tuple[int, dict] | None = None

        def _about_to_save(self, args, state, control):
            if control.should_save and args.should_save:
                _remove_marker(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def on_step_end(self, args, state, control, **kwargs):
            self.step_end_rng = (state.global_step, _rng_snapshot())
            self._about_to_save(args, state, control)

        def on_epoch_end(self, args, state, control, **kwargs):
            self._about_to_save(args, state, control)

        def on_save(self, args, state, control, **kwargs):
            _barrier()  # sharded optimizer states: every process has written its files
            if args.should_save:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    write_marker(folder, state.global_step)

    CheckpointMarker.__module__, CheckpointMarker.__qualname__ = __name__, "CheckpointMarker"
    return CheckpointMarker


def __getattr__(name: str):
    # CheckpointMarker subclasses transformers' TrainerCallback, whose import takes seconds: it is built on
    # first use, so that the lock (taken before anything heavy loads) stays cheap
    if name == "CheckpointMarker":
        cls = globals()["CheckpointMarker"] = _make_checkpoint_marker()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _marker_class():
    return globals().get("CheckpointMarker") or __getattr__("CheckpointMarker")


# --------------------------------------------------------------------------------------------
# The output-dir lock
# --------------------------------------------------------------------------------------------
class OutputDirInUse(RuntimeError):
    """Another live run holds the output dir's lock."""


def _now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _process_rank() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                pass
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            + (f" ({' '.join(holder['argv'])[:200]})" if holder.get("argv") else ""))


class OutputDirLock:
    """This process's hold on ``<output_dir>/.rlattn.lock``; released at exit (or by :meth:`release`)."""

    def __init__(self, output_dir: Path, fd: int, created_dir: bool):
        self.output_dir = output_dir
        self.path = output_dir / LOCK_FILE
        self.fd = fd
        self._created_dir = created_dir
        self._inode = os.fstat(fd).st_ino
        atexit.register(self.release)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == self._inode:  # still ours (not taken over)
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        _HELD.pop(str(self.output_dir), None)
        if self._created_dir:  # a run that wrote nothing leaves no directory behind
            try:
                self.output_dir.rmdir()
            except OSError:
                pass


_HELD: dict[str, OutputDirLock] = {}


def _read_holder(path: Path, wait_s: float = 1.0) -> dict:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text()
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.05)


def set_torch_threads(training_args) -> int | None:
    """On CPU, set torch's intra-op threads to ``training_args.torch_threads`` or, when 0, to the cores
    this process may use divided by the processes on this machine (``LOCAL_WORLD_SIZE``).

    Why: ``accelerate launch`` without ``--cpu`` exports ``OMP_NUM_THREADS=1`` for every script it
    starts, so a single-process CPU run used one of the machine's cores. Returns the number set, or
    None on an accelerator (the setting only matters for CPU kernels there).
    """
    import torch

    from rlattn.utils import runs_on_cpu

    if not runs_on_cpu(getattr(training_args, "use_cpu", False)):
        return None
    n = int(getattr(training_args, "torch_threads", 0) or 0)
    if n == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if torch.get_num_threads() != n:
        logger.info("torch threads: %d -> %d (torch_threads=%s, OMP_NUM_THREADS=%s)", torch.get_num_threads(), n,
                    getattr(training_args, "torch_threads", 0), os.environ.get("OMP_NUM_THREADS"))
        torch.set_num_threads(n)
    return n


def lock_output_dir(training_args, overwrite: bool = False) -> OutputDirLock | None:
    """Take ``training_args.output_dir`` for this run, or refuse (:class:`OutputDirInUse`).

    Only the main process (env ``RANK``/``LOCAL_RANK`` 0 or unset) takes the lock; the other processes
    of a multi-process run return None. A lock whose holder is gone (the kernel dropped its ``flock``)
    is taken over with a warning. ``overwrite`` (``overwrite_output_dir``) takes over a lock that
    looks held, for a holder you know is gone (e.g. one that ran on another host).
    """
    if _process_rank() != 0:
        return None
    import fcntl

    out = Path(os.path.abspath(training_args.output_dir))
    if str(out) in _HELD:
        return _HELD[str(out)]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OSError(err.errno, f"cannot lock {path} ({err.strerror}); this filesystem may not support "
                                         "flock: give output_dir on a local disk") from None
            holder = _read_holder(path)
            if not overwrite:
                raise OutputDirInUse(
                    f"output_dir {out} is in use by another run: {_describe(holder)} (lock {path}). Two runs in one "
                    "output_dir overwrite each other's checkpoints and interleave rollouts.jsonl. Fix: give this run "
                    "another output_dir (--output_dir ...), or wait for that run to end; if it is not running any more "
                    "(e.g. it ran on another host), pass --overwrite_output_dir true to take the lock over.") from None
            logger.warning("rlattn: overwrite_output_dir: taking over the lock on %s from %s", out, _describe(holder))
            try:
                path.unlink()  # the old holder keeps a lock on a file nobody else opens
            except FileNotFoundError:
                pass
            continue
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:  # released and removed while we waited: retry
                raise FileNotFoundError
        except FileNotFoundError:
            os.close(fd)
            continue
        previous = _read_holder(path, wait_s=0.0)
        if previous:
            pid = previous.get("pid")
            alive = (previous.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0
                     and _pid_alive(pid))
            logger.warning("rlattn: output_dir %s had a stale lock from %s, which %s; taking it over", out,
                           _describe(previous), "no longer holds it" if alive else "is not running any more")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now_iso(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        lock = OutputDirLock(out, fd, created)
        _HELD[str(out)] = lock
        return lock
    raise OutputDirInUse(f"could not take the lock {path}: it changed hands 20 times; is another run starting there?")


# --------------------------------------------------------------------------------------------
# Checks before the model loads
# --------------------------------------------------------------------------------------------
def _model_config(spec: str, revision: str | None):
    """The model config of any spec, without weights; None when only the hub could answer."""
    from transformers import AutoConfig

    from rlattn.models import locate_model, resolve_model

    kind, path, base = locate_model(spec)  # a missing local path raises here, saying so
    if kind in ("embedded", "tiny"):
        path = resolve_model(spec)
    if kind == "adapter":
        return _model_config(base, None)
    try:
        return AutoConfig.from_pretrained(path, revision=revision, local_files_only=kind == "hub")
    except Exception:  # noqa: BLE001 - a hub id not cached: the loader reports it
        if kind == "hub":
            return None
        raise


def check_model(model_args, training_args) -> None:
    """Fail before any weight loads: a missing local model path (FileNotFoundError saying so) and
    ``attn_layers`` outside the model's layers (ValueError naming ``attn_layers``)."""
    config = _model_config(model_args.model_name_or_path, getattr(model_args, "model_revision", None))
    if config is None or not hasattr(training_args, "attention_stats_config"):
        return
    from rlattn.credit import strategy_needs

    if "attention" not in strategy_needs(training_args.credit_strategy):
        return
    text = getattr(config, "text_config", None) or config
    total = getattr(text, "num_hidden_layers", None)
    if total is None:
        return
    stats = training_args.attention_stats_config()
    try:
        stats.resolve_layers(int(total))
    except ValueError:
        bad = sorted(l for l in set(stats.layers or []) if not 0 <= l < total)
        raise ValueError(
            f"attn_layers={training_args.attn_layers!r}: {bad} out of range for {model_args.model_name_or_path!r}, "
            f"which has {total} layers (0..{total - 1}). Choose layers in 0..{total - 1}, or leave attn_layers unset "
            "for the middle third (attn_num_layers of them).") from None


# --------------------------------------------------------------------------------------------
# Append-only logs on resume
# --------------------------------------------------------------------------------------------
def restart_logs(output_dir: str | os.PathLike, resume_step: int | None, rank: int = 0) -> None:
    """Make this process's ``rollouts.jsonl`` start where the run starts.

    Resuming from a checkpoint at ``global_step`` N: keep the records of steps < N (a record's
    ``step`` is the global step before its optimizer step, so step N-1 is the last one inside the
    checkpoint) and drop the rest, which the resumed run writes again; atomically. A fresh run
    (``resume_step`` None) moves an earlier run's file aside to ``rollouts.previous-<time>.jsonl``.
    """
    from rlattn.rollouts.records import records_path, truncate_records

    path = records_path(output_dir, rank)
    if not path.is_file():
        return
    if resume_step is None:
        if path.stat().st_size == 0:
            return
        aside = path.with_name(f"{path.stem}.previous-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        os.replace(path, aside)
        logger.warning("rlattn: %s held an earlier run's records; moved to %s (this run starts at step 0)", path, aside)
        return
    kept, dropped = truncate_records(path, before_step=resume_step)
    if dropped:
        logger.warning("rlattn: %s: dropped %d records of steps >= %d (the resumed run writes them again); kept %d",
                       path, dropped, resume_step, kept)


# --------------------------------------------------------------------------------------------
# Saves after a fault
# --------------------------------------------------------------------------------------------
def _newest_complete(output_dir) -> Path | None:
    """The complete checkpoint or save after a fault with the largest global step."""
    complete = [p for p in list_checkpoints(output_dir) + list_interrupt_saves(output_dir) if checkpoint_status(p).complete]
    return max(complete, key=checkpoint_step, default=None)


@contextmanager
def _checkpoint_root(trainer, root: Path):
    """The Trainer's own checkpoint save, pointed at ``root``; with several processes, made collective-free
    for the main process saving alone (DDP: every process holds the same weights and optimizer state)."""
    saved = {}
    trainer._get_output_dir = lambda trial=None: str(root)
    if trainer.accelerator.num_processes > 1:
        def store_flos():  # the Trainer's own sums the flos over the processes: a collective
            trainer.state.total_flos += trainer.current_flos
            trainer.current_flos = 0

        trainer.store_flos = store_flos
        saved["best_global_step"] = trainer.state.best_global_step
        trainer.state.best_global_step = None  # its barrier, too
    try:
        yield
    finally:
        for name in ("_get_output_dir", "store_flos"):
            trainer.__dict__.pop(name, None)
        if "best_global_step" in saved:
            trainer.state.best_global_step = saved["best_global_step"]


def save_after_fault(trainer, output_dir: str | os.PathLike, error: BaseException, start_step: int = 0) -> Path | None:
    """After ``error`` stopped training: save a resumable ``<output_dir>/interrupted-<step>-<time>/``
    (model, optimizer, scheduler, RNG, trainer state, ``metrics.jsonl``, completion marker), written
    under a temporary name and renamed when complete. Never overwrites an earlier save. Saves nothing
    when no optimizer step was made since ``start_step``, and nothing under DeepSpeed or FSDP (saving
    needs every process; the last complete checkpoint is the recovery point). Returns the directory."""
    out = Path(output_dir)
    step = int(trainer.state.global_step)
    what = type(error).__name__
    main = trainer.accelerator.is_main_process
    last = _newest_complete(out)
    resume_hint = (f"the last complete checkpoint is {last} (--resume_from_checkpoint {last})" if last is not None
                   else "there is no complete checkpoint to resume from")
    if step <= start_step:
        if main:
            logger.warning(f"rlattn: {what} before this run's first optimizer step (global step {step}): nothing new "
                           f"to save; {resume_hint}")
        return None
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
        if main:
            logger.warning(f"rlattn: {what} at step {step}: not saved (DeepSpeed/FSDP save on every process together, "
                           f"which a fault does not allow); {resume_hint}")
        return None
    if not main:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = out / f"interrupted-{step}-{stamp}"
    n = 1
    while final.exists():
        n += 1
        final = out / f"interrupted-{step}-{stamp}-{n}"
    tmp = out / f".tmp-{final.name}"
    marker = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, _marker_class())), None)
    if marker is not None and marker.step_end_rng is not None and marker.step_end_rng[0] == step:
        _rng_restore(marker.step_end_rng[1])  # the state as of the end of step `step`, not of the partial next one
    try:
        with _checkpoint_root(trainer, tmp):
            trainer._save_checkpoint(trainer.model, trial=None)
        folder = tmp / f"checkpoint-{step}"
        from rlattn.cli import write_run_summary

        write_run_summary(trainer, folder)
        write_marker(folder, step)
        os.rename(folder, final)
        _fsync_path(out, directory=True)
    except BaseException as save_error:  # a full disk, a second Ctrl-C
        logger.warning(f"rlattn: {what} at step {step}; saving it failed ({type(save_error).__name__}: {save_error}), "
                       f"so nothing was saved (the partial save is removed); {resume_hint}")
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.warning(f"rlattn: {what} at step {step}: saved a resumable checkpoint (model, optimizer, scheduler, RNG and "
                   f"trainer state) to {final}\n  resume with: --resume_from_checkpoint {final}")
    return final


# --------------------------------------------------------------------------------------------
# The shared train/save sequence
# --------------------------------------------------------------------------------------------
def _bound_rewards(trainer, script_args) -> None:
    from rlattn.rewards.registry import bound_rewards

    bound_rewards(getattr(trainer, "reward_funcs", []),
                  call_timeout_s=getattr(script_args, "reward_call_timeout_s", None) or None,
                  max_failed_steps=int(getattr(script_args, "reward_max_failed_steps", 0) or 0),
                  max_failed_frac=float(getattr(script_args, "reward_max_failed_frac", 1.0)))


@contextlib.contextmanager
def _ctrl_c_cannot_be_swallowed(trainer):
    """Ctrl-C raises KeyboardInterrupt at once, as usual; should that exception be swallowed (Python
    drops it when it lands inside a ``__del__`` or a finaliser: "Exception ignored in ..."), it is
    raised again at the end of the current step or micro-step, so the run still stops and saves.
    Main thread only; the previous handler is restored afterwards."""
    import signal
    import threading

    from transformers import TrainerCallback

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []

    def on_sigint(signum, frame):
        pressed.append(signum)
        raise KeyboardInterrupt

    class _Guard(TrainerCallback):
        def _check(self, *a, **k):
            if pressed:
                raise KeyboardInterrupt("Ctrl-C (raised again at the step's end: the first one was swallowed)")

        on_step_end = on_substep_end = _check

    guard = _Guard()
    previous = signal.signal(signal.SIGINT, on_sigint)
    trainer.add_callback(guard)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        trainer.remove_callback(guard)


def run_training(trainer, training_args, script_args=None) -> Path:
    """Train (resuming per ``resume_from_checkpoint``) and save; what ``scripts/grpo.py`` and
    ``scripts/ppo.py`` share. Returns the path of ``metrics.jsonl``.

    Before training: attaches :class:`CheckpointMarker` if the trainer lacks it, resolves the
    checkpoint (the newest complete one for ``true``/``last``), applies ``script_args``' reward bounds
    and cuts ``rollouts.jsonl`` back to the resumed step. On any exception: :func:`save_after_fault`,
    then the exception goes on.
    """
    from rlattn.cli import resolve_checkpoint, write_run_summary

    marker_class = _marker_class()
    if not any(isinstance(cb, marker_class) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(marker_class())
    if script_args is not None:
        _bound_rewards(trainer, script_args)
    output_dir = training_args.output_dir
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
    start_step = checkpoint_step(checkpoint) if checkpoint is not None else 0
    restart_logs(output_dir, start_step if checkpoint is not None else None, rank=trainer.accelerator.process_index)
    try:
        with _ctrl_c_cannot_be_swallowed(trainer):
            trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException as error:
        save_after_fault(trainer, output_dir, error, start_step)
        raise
    trainer.save_model(output_dir)
    trainer.save_state()
    path = write_run_summary(trainer, output_dir)
    trainer.accelerator.print(f"rlattn: saved to {output_dir} (metrics: {path})")
    return path
