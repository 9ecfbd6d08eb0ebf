"""How fast is each float dtype on this CPU? The measurement behind ``cpu_precision: auto``.

    python bench/cpu_dtypes.py [--size 1024] [--repeats 10] [--write]

Times square matmuls (the loss passes' and generation's main cost) in float32, bfloat16 and float16
on torch's CPU threads, side by side in one process, and prints GFLOPS, the ratio to float32 and
what ``rlattn.utils.cpu_has_native`` answers for each dtype (the rule the training, evaluation and
filter configs follow). Recipes ask for bf16 because the CPU they were tuned on has AVX-512 BF16;
a CPU without AVX-512 runs bf16 through scalar kernels.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command, machine, write_section  # noqa: E402

from rlattn.utils import cpu_has_native, fast_cpu_dtype  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")


def gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return ", ".join(wanted) or "none of avx2/avx512"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    # the half types can be ~100x slower: time them on fewer repeats so the script stays short
    rates = {name: gflops(getattr(torch, name), args.size, args.repeats if name == "float32" else max(1, args.repeats // 5))
             for name in DTYPES}
    rows = ["| dtype | GFLOPS | vs float32 | native kernels (`cpu_has_native`) | `cpu_precision: auto` trains in |",
            "|---|---:|---:|---|---|"]
    for name in DTYPES:
        native = cpu_has_native(name)
        rows.append(f"| {name} | {rates[name]:.1f} | {rates[name] / rates['float32']:.3f}x | {'yes' if native else 'no'} "
                    f"| {fast_cpu_dtype(name)} |")
    cpu_id = re.sub(r"\s+", " ", machine())
    body = (f"Machine: {cpu_id}; CPU flags: {cpu_flags()}.\n"
            f"Command: `{command()}`; {args.size} x {args.size} matmuls, torch's CPU threads.\n\n" + "\n".join(rows))
    print(body)
    if args.write:
        write_section("cpu_dtypes", "## Matmul speed by dtype on this CPU (`bench/cpu_dtypes.py`)\n\n" + body)


if __name__ == "__main__":
    main()
