"""Shared helpers for bench/ scripts: machine description and writing tables into docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace (or append) the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nTables written by the scripts in bench/.\n"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def run_child(args: list[str], timeout: float) -> str:
    out = subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout


if __name__ == "__main__":  # python bench/_common.py NAME FILE.md: put a table that came back from the GPU check into docs/benchmarks.md
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/_common.py NAME FILE.md  (e.g. gpu_attention_stats gpu_out/attention_stats.md)")
    write_section(sys.argv[1], Path(sys.argv[2]).read_text())
    print(f"wrote section {sys.argv[1]} of {DOCS}")
