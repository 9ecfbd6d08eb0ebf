"""Benchmark: time to compute γ for each credit strategy on CPU (B=512, T=8192 by default).

Random WAAD in [0, 10] and FAI in [0, 1) with realistic masks: each row has a left pad, a prompt
(no loss), a response of random length and a right pad; FAI is NaN on the last 10 response tokens
(empty horizon) and outside the response, as the attention engine produces it. Times the checked
function returned by ``get_credit_fn`` (input and output validation included), one warm-up call,
then the median of ``--repeats`` calls. Prints a markdown table with the machine and the command.

    python bench/credit.py [--batch 512] [--length 8192] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from rlattn.credit.registry import CREDIT_REGISTRY, CreditConfig, get_credit_fn

BUILTINS = ("uniform", "local_chunk", "global_anchor", "coupled", "random", "high_entropy")


def make_inputs(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(length)  # [T]
    left = torch.randint(0, length // 16 + 1, (batch, 1), generator=g)  # [B, 1] left padding
    prompt = torch.randint(0, length // 16 + 1, (batch, 1), generator=g)  # [B, 1] prompt tokens
    start = left + prompt  # [B, 1] first response position
    room = length - start  # [B, 1]
    resp = (torch.rand((batch, 1), generator=g) * room).long().clamp(min=1)  # [B, 1] response length
    mask = (pos >= start) & (pos < start + resp)  # [B, T]
    waad = torch.where(mask, torch.rand((batch, length), generator=g) * 10, 0.0)  # [B, T]
    fai = torch.rand((batch, length), generator=g)  # [B, T]
    fai = torch.where(mask & (pos < start + resp - 10), fai, torch.nan)  # [B, T] NaN: empty horizon
    entropies = torch.rand((batch, length), generator=g) * 3  # [B, T]
    return {"waad": waad, "fai": fai, "mask": mask, "entropies": entropies}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--write", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    inputs = make_inputs(args.batch, args.length)
    n_resp = int(inputs["mask"].sum())
    config = CreditConfig()
    rows = []
    for name in BUILTINS:
        assert name in CREDIT_REGISTRY, name
        fn = get_credit_fn(name)
        fn(**inputs, config=config)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            gamma = fn(**inputs, config=config)
            times.append(time.perf_counter() - t0)
        amplified = float((gamma[inputs["mask"]] > 1).float().mean())
        rows.append((name, statistics.median(times), min(times), amplified))

    command = "python " + " ".join(shlex.quote(a) for a in ["bench/credit.py", *sys.argv[1:]])
    lines = [
        "## Credit strategies: γ computation time (CPU)\n",
        f"- command: `{command}`",
        f"- machine: {platform.platform()}, {cpu_name()}, {os.cpu_count()} CPUs "
        f"(1-min load average {load:.2f} at start); Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- inputs: B={args.batch}, T={args.length}, {n_resp:,} response tokens "
        f"({n_resp / (args.batch * args.length):.0%} of B·T); "
        f"median of {args.repeats} calls after one warm-up\n",
        "| strategy | median (s) | min (s) | amplified fraction of R | under 1 s |",
        "|---|---:|---:|---:|:---:|",
    ]
    for name, med, best, amp in rows:
        lines.append(f"| {name} | {med:.3f} | {best:.3f} | {amp:.3f} | {'yes' if med < 1 else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _common import write_section

        write_section("credit", table)


if __name__ == "__main__":
    main()
