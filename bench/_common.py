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


# ---- recipe runs in a child process, instrumented (bench/step.py, bench/memory.py) ----

def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``name:--key=value,--key=a b`` -> ``(name, ["--key", "value", "--key", "a", "b"])``."""
    name, _, flags = spec.partition(":")
    overrides: list[str] = []
    for f in filter(None, flags.split(",")):
        key, _, value = f.partition("=")
        overrides += [key] + value.split()
    return name, overrides


def run_variant(bench_file: str, recipe: str, steps: int, overrides: list[str], label: str):
    """Run ``bench_file --child OUT OVERRIDES`` on ``recipe`` in a fresh process; return the JSON it wrote."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, bench_file, recipe, "--steps", str(steps), "--child", out, json.dumps(overrides)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out).read_text())


def script_for(recipe: str) -> Path:
    """scripts/ppo.py for PPO recipes (ppo_*.yaml or under a ppo/ folder), else scripts/grpo.py."""
    ppo = Path(recipe).name.startswith("ppo") or "ppo" in Path(recipe).parts
    return Path(__file__).resolve().parents[1] / "scripts" / ("ppo.py" if ppo else "grpo.py")


def run_recipe_instrumented(recipe: str, steps: int, out_dir: str, overrides: list[str], on_trainer, on_optimizer) -> None:
    """Run ``recipe`` for ``steps`` optimizer steps in this process (no saves, a log line per step).
    ``on_trainer(trainer)`` runs right after the trainer is built; ``on_optimizer(optimizer)`` when
    it creates its optimizer."""
    import runpy

    import rlattn.trainer as core

    script = script_for(recipe)
    sys.argv = [script.name, recipe, "--max_steps", str(steps), "--save_strategy", "no", "--logging_steps", "1",
                "--credit_log_samples", "0", "--output_dir", os.path.join(out_dir, "run"), *overrides]
    original_init = core.AttnCreditGRPOTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        on_trainer(self)
        original_create = self.create_optimizer

        def create_optimizer(*a, **k):
            opt = original_create(*a, **k)
            on_optimizer(opt)
            return opt

        self.create_optimizer = create_optimizer

    core.AttnCreditGRPOTrainer.__init__ = init
    torch.manual_seed(0)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        if done.code not in (None, 0):
            raise


if __name__ == "__main__":  # python bench/_common.py NAME FILE.md: put a table that came back from the GPU check into docs/benchmarks.md
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/_common.py NAME FILE.md  (e.g. gpu_attention_stats gpu_out/attention_stats.md)")
    write_section(sys.argv[1], Path(sys.argv[2]).read_text())
    print(f"wrote section {sys.argv[1]} of {DOCS}")
