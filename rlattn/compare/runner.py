"""Run a strategy × seed grid through the real trainer, evaluate every run, report paired statistics.

``run_comparison(config)``:

1. **Check the grid first** (before any training): every run's arguments parse through the
   training dataclasses (an unknown strategy, key or value fails naming it), ``max_steps`` > 0,
   at least one seed, the baseline among the strategies.
2. **Train** each (strategy, seed) with ``scripts/grpo.py`` in a subprocess into
   ``runs/<label>/seed<s>`` (log in ``runs/<label>/seed<s>.log``). A run whose
   ``compare_done.json`` exists is reused; an interrupted one (no marker) is deleted and restarted.
   One progress line per run.
3. **Evaluate** the starting model and every run's final policy with the evaluator
   (``rlattn.eval.evaluate``; it resumes from its own samples) on the held-out set.
4. **Report** (:mod:`rlattn.compare.report`): per strategy, held-out accuracy per seed, mean and
   95 % interval (bootstrap over seeds, then problems); paired differences against the baseline
   on the same seeds and problems, with intervals and a sign count over seeds; learning curves;
   wall time and credit overhead per run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import CompareConfig, Variant

__all__ = ["GridRun", "check_grid", "run_comparison"]

logger = logging.getLogger("rlattn")
ROOT = Path(__file__).resolve().parents[2]
DONE = "compare_done.json"


@dataclass(frozen=True)
class GridRun:
    variant: Variant
    seed: int
    output_dir: Path
    argv: tuple[str, ...]  # scripts/grpo.py's arguments


def _script(name: str) -> Path:
    """scripts/<name> of this checkout (the comparison runs the real entry points)."""
    path = ROOT / "scripts" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the comparison from an rlattn checkout")
    return path


def check_grid(config: CompareConfig, extra: tuple = ()) -> list[GridRun]:
    """Every run of the grid, with its arguments parsed once here so a bad grid fails before training.

    ``extra``: the plug-in dataclasses scripts/grpo.py parses besides the core's (scripts/compare.py
    passes the same), so recipes with plug-in keys parse here as they do there."""
    from rlattn.cli import parse_grpo_args

    runs = []
    for variant in config.variants():
        for seed in config.compare_seeds:
            out = Path(config.output_dir) / "runs" / variant.label / f"seed{seed}"
            argv = (config.compare_base_recipe, *config.budget(), *variant.overrides, "--seed", str(seed),
                    "--output_dir", str(out))
            try:
                training_args = parse_grpo_args(list(argv), extra=extra)[1]
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(f"compare_strategies entry {variant.label!r} (seed {seed}): {err}") from None
            except SystemExit as err:  # argparse: an unknown key
                raise ValueError(f"compare_strategies entry {variant.label!r} or compare_budget has an argument the "
                                 f"training recipe does not know (exit {err.code}); see the message above") from None
            if not training_args.max_steps or training_args.max_steps <= 0:
                raise ValueError(f"the budget is unset: max_steps={training_args.max_steps!r} for {variant.label!r}; put "
                                 "'--max_steps N' in compare_budget (every run must get the same number of steps)")
            runs.append(GridRun(variant, seed, out, argv))
    return runs


def _train(run: GridRun, config: CompareConfig, index: int, total: int, log: Callable[[str], None]) -> dict:
    done = run.output_dir / DONE
    tag = f"[{index}/{total}] {run.variant.label} seed {run.seed}"
    if done.is_file():
        info = json.loads(done.read_text())
        log(f"{tag}: reused ({info['wall_s']:.0f} s of training)")
        return info
    if run.output_dir.exists():
        log(f"{tag}: an interrupted run is in {run.output_dir}; restarting it")
        shutil.rmtree(run.output_dir)
    run.output_dir.parent.mkdir(parents=True, exist_ok=True)
    launcher = config.compare_launcher.split() if config.compare_launcher else [config.compare_python or sys.executable]
    cmd = [*launcher, str(_script("grpo.py")), *run.argv]
    logfile = run.output_dir.parent / f"seed{run.seed}.log"
    t0 = time.perf_counter()
    with logfile.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=os.getcwd(),
                              env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{tag}: training failed (exit {proc.returncode}); see {logfile}")
    info = {"label": run.variant.label, "seed": run.seed, "wall_s": wall, "command": cmd}
    done.write_text(json.dumps(info, indent=1))
    log(f"{tag}: trained in {wall:.0f} s -> {run.output_dir}")
    return info


def _base_model(config: CompareConfig, extra: tuple) -> str:
    from rlattn.cli import parse_grpo_args

    return parse_grpo_args([config.compare_base_recipe, *config.budget()], extra=extra)[2].model_name_or_path


def run_comparison(config: CompareConfig, log: Callable[[str], None] | None = None, extra: tuple = ()) -> dict:
    """Check, train, evaluate and report the grid; returns the report dict (also report.json).
    ``extra``: plug-in dataclasses, as for :func:`check_grid`."""
    import shlex

    from rlattn.eval import evaluate, parse_eval_args

    from .report import write_report

    log = log or (lambda line: print(line, flush=True))
    runs = check_grid(config, extra)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = [_train(run, config, i + 1, len(runs), log) for i, run in enumerate(runs)]

    labels = ["start"] + [f"{r.variant.label}/seed{r.seed}" for r in runs]
    models = [_base_model(config, extra)] + [str(r.output_dir) for r in runs]
    eval_args = [config.compare_eval_recipe, *shlex.split(config.compare_eval_overrides), "--models", *models,
                 "--model_labels", *labels, "--output_dir", str(out / "eval")]
    log(f"evaluating {len(models)} models (the starting model and {len(runs)} runs) -> {out / 'eval'}")
    eval_report = evaluate(parse_eval_args(eval_args))
    signal = None
    if config.compare_signal:
        from .signal import signal_shift

        signal = signal_shift(config, runs, models[0], extra=extra)
    report = write_report(config, runs, infos, eval_report, out, signal=signal)
    log(f"report in {out / 'report.md'}")
    return report
