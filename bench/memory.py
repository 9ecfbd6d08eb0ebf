"""Peak memory of a training run and the phase that sets it, for several recipes side by side.

    python bench/memory.py recipes/anchor_credit.yaml recipes/ppo_anchor_credit.yaml --steps 4 [--write]
    python bench/memory.py recipes/ppo_anchor_credit.yaml --variant mb8:--per_device_train_batch_size=8,--steps_per_generation=4

Each recipe (or variant) runs in its own process for ``--steps`` optimizer steps (``scripts/ppo.py``
for PPO recipes, else ``scripts/grpo.py``). The process's peak RSS (``getrusage`` ``ru_maxrss``,
what ``/usr/bin/time -v`` reports) is read before and after each phase: model loading, the rollout
batch (``_generate_and_score_completions``: generation, rewards, the old-log-prob and value passes), the loss forward (``_compute_loss``),
the backward and the optimizer step. A phase's "peak gain" is how much it raised the peak; the
resident size at the end of each step shows growth from step to step. ``--write`` puts the table
into docs/benchmarks.md (section ``memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, machine, parse_variant, run_recipe_instrumented, run_variant, script_for, write_section  # noqa: E402

PHASES = ("load", "generate", "loss_forward", "backward", "optimizer")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(recipe: str, overrides: list[str], steps: int, out: str) -> None:
    """Run the recipe for ``steps`` steps; write the peak gains per phase and RSS per step as JSON."""
    from transformers import TrainerCallback

    gains = {k: 0.0 for k in PHASES}
    start = _peak_mb()
    record = {"start_mb": start, "rss_per_step_mb": []}

    def tracked(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            before = _peak_mb()
            try:
                return original(*args, **kwargs)
            finally:
                gains[key] += _peak_mb() - before

        setattr(owner, name, wrapper)

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            gains["load"] = _peak_mb() - start
            record["after_load_mb"] = _peak_mb()

        def on_step_end(self, args, state, control, **kw):
            record["rss_per_step_mb"].append(round(_rss_mb()))

    def on_trainer(trainer):
        trainer.add_callback(Steps())
        # on the instance: the outermost call of each, whatever the subclass overrides (PPO's critic passes too)
        tracked(trainer, "_generate_and_score_completions", "generate")
        tracked(trainer, "_compute_loss", "loss_forward")
        tracked(trainer.accelerator, "backward", "backward")

    t0 = time.perf_counter()
    run_recipe_instrumented(recipe, steps, os.path.dirname(out), overrides, on_trainer,
                            on_optimizer=lambda opt: tracked(opt, "step", "optimizer"))
    record.update(gains=gains, peak_mb=_peak_mb(), wall_s=time.perf_counter() - t0, script=script_for(recipe).name)
    Path(out).write_text(json.dumps(record))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--variant", action="append", default=[],
                   help="name:--key=value,--key=value (repeatable): the first recipe with these overrides")
    p.add_argument("--write", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("OUT", "OVERRIDES_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.recipes[0], json.loads(args.child[1]), args.steps, args.child[0])
        return
    runs = [(Path(r).stem, r, []) for r in args.recipes]
    runs += [(name, args.recipes[0], overrides) for name, overrides in map(parse_variant, args.variant)]
    rows = []
    for name, recipe, overrides in runs:
        r = run_variant(__file__, recipe, args.steps, overrides, name)
        rows.append((name, " ".join(overrides), r))
        print(f"{name}: peak {r['peak_mb']:.0f} MB, gains {json.dumps({k: round(v) for k, v in r['gains'].items()})}, "
              f"RSS per step {r['rss_per_step_mb']}", flush=True)
    base = rows[0][2]["peak_mb"]
    head = ("| run | overrides | peak RSS (MB) | vs first | " + " | ".join(f"{k} (+MB)" for k in PHASES)
            + " | RSS after each step (MB) |\n|" + "---|" * (len(PHASES) + 5))
    lines = [f"Machine: {machine()}.", f"Command: `{command()}`; {args.steps} optimizer steps per run, each in its "
             "own process; peak = ru_maxrss (as `/usr/bin/time -v`); a phase's +MB is how much it raised the peak.", "", head]
    for name, overrides, r in rows:
        cells = " | ".join(f"{r['gains'][k]:.0f}" for k in PHASES)
        lines.append(f"| {name} | `{overrides or '-'}` | **{r['peak_mb']:.0f}** | {r['peak_mb'] / base:.2f}x | {cells} | "
                     f"{', '.join(map(str, r['rss_per_step_mb']))} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("memory", "## Peak memory by phase (`bench/memory.py`)\n\n" + table)


if __name__ == "__main__":
    main()
