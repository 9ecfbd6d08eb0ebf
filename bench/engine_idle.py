"""Does the idle vLLM-CPU engine slow the trainer's own passes down, and does stopping it help?

    .venv-vllm/bin/python bench/engine_idle.py [--rounds 8] [--kvcache_space_gb 2 1] [--write]

Times a no-grad forward of the embedded model (float32, 8 x 231 tokens: one micro-batch of the
main recipe's log-prob pass) in this process, with an engine up and idle, in rounds that alternate
between the engine *running* (as before ``pause_when_idle``) and the engine *stopped* (SIGSTOP, what
the backend now does between requests), then with the engine closed; once per KV-cache pool size (the engine's resident memory grows with
it). Per state it prints the median
forward time, the trainer's involuntary context switches during one forward (each one a torch
thread preempted) and the CPU seconds the engine's threads used meanwhile (/proc). Alternating the
states within one run is what makes the ratio readable on a machine whose speed drifts.
``--write`` puts the table into docs/benchmarks.md (section ``engine_idle``).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, machine, write_section  # noqa: E402

MODEL = "embedded:smollm2-135m-instruct"


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_gb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _preempted() -> int:
    """Involuntary context switches of all of this process's threads so far."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        for line in open(f"/proc/self/task/{tid}/status"):
            if line.startswith("nonvoluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--kvcache_space_gb", type=int, nargs="+", default=[2, 1],
                   help="KV-cache pools to try, one engine each (VLLMCPUConfig's default 2; the trainer's rollout_vllm_kvcache_gb 1)")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()

    import torch

    from rlattn.models import eos_token_ids, load_model_and_tokenizer, resolve_model
    from rlattn.rollouts.base import SamplingSpec
    from rlattn.rollouts.vllm_cpu import VLLMCPUBackend, VLLMCPUConfig

    loaded = load_model_and_tokenizer(MODEL, dtype="float32")
    ids = torch.randint(100, 20000, (8, 231), generator=torch.Generator().manual_seed(0))  # [B, P + C]

    def forward(engine_pid: int | None) -> tuple[float, int, float]:
        c0 = _cpu_s(engine_pid) if engine_pid else 0.0
        s0 = _preempted()
        t0 = time.perf_counter()
        with torch.no_grad():
            loaded.model(input_ids=ids)
        wall = time.perf_counter() - t0
        return wall, _preempted() - s0, (_cpu_s(engine_pid) - c0) if engine_pid else 0.0

    for _ in range(3):  # warm-up: the first passes of a process are slower
        forward(None)
    results: dict[str, list[tuple[float, int, float]]] = {}
    resident: dict[str, float] = {}
    for gb in args.kvcache_space_gb:
        engine = VLLMCPUBackend(VLLMCPUConfig(model=resolve_model(MODEL), dtype="float32", max_model_len=512, pause_when_idle=False,
                                              kvcache_space_gb=gb), eos_token_ids=eos_token_ids(loaded.model, loaded.tokenizer)).start()
        running, stopped = f"kvcache {gb} GiB, engine idle, running", f"kvcache {gb} GiB, engine idle, stopped (SIGSTOP)"
        results[running], results[stopped] = [], []
        try:
            engine.generate([[1, 2, 3, 4, 5]] * 16, SamplingSpec(max_tokens=32, temperature=0.7))
            pid = engine._proc.pid
            resident[running] = resident[stopped] = _rss_gb(pid)
            for _ in range(args.rounds):
                results[running].append(forward(pid))
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.2)
                results[stopped].append(forward(pid))
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.2)
        finally:
            engine.close()
        results.setdefault("no engine", []).extend(forward(None) for _ in range(max(2, args.rounds // 2)))
    resident["no engine"] = 0.0

    base = statistics.median(w for w, _, _ in results["no engine"])
    lines = [f"Machine: {machine()}.", f"Command: `{command()}`; a no-grad forward of the embedded model, float32, "
             f"8 x 231 tokens; per engine, the states alternate within each of {args.rounds} rounds, and the no-engine "
             "forwards follow each engine's close; medians.", "",
             "| state | engine resident (GB) | forward (s) | vs no engine | trainer's involuntary context switches per forward | engine CPU s per forward |",
             "|---|---:|---:|---:|---:|---:|"]
    for state, rows in results.items():
        wall = statistics.median(w for w, _, _ in rows)
        lines.append(f"| {state} | {resident[state]:.1f} | {wall:.2f} | {wall / base:.2f}x | {statistics.median(s for _, s, _ in rows):.0f} "
                     f"| {statistics.median(c for _, _, c in rows):.2f} |")
        print(f"{state}: all {[round(w, 2) for w, _, _ in rows]}", flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("engine_idle", "## The idle vLLM-CPU engine and the trainer's passes (`bench/engine_idle.py`)\n\n" + table)


if __name__ == "__main__":
    main()
