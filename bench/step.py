"""Where one training step's time goes: generation, reward scoring, statistics, loss forward and
backward, optimizer, the rest; for one or several variants of a recipe, measured side by side.

    python bench/step.py recipes/anchor_credit.yaml --steps 6 [--variant name:--key=value,--key=value ...] [--write]

Each variant runs in its own process (the same recipe plus its overrides) for ``--steps`` steps.
A generation batch serves ``steps_per_generation x num_iterations / gradient_accumulation_steps``
optimizer steps (a *cycle*; 2 in the CPU recipes), and only the first step of a cycle generates, so
the first cycle is dropped (warm-up) and the mean is taken over whole cycles after it (before
commit "bench/step.py: whole generation cycles" it averaged steps 2..N, which over-weighted the
steps that do not generate). Phases are timed by wrapping the
trainer's methods: ``_generate`` (generation), ``_calculate_rewards`` (rewards), the
``credit/stats_time_s`` metric (attention statistics and γ), ``_compute_loss`` minus the statistics
(loss forward), ``accelerator.backward`` (backward) and ``optimizer.step``; "other" is the step's
wall time minus those. ``--write`` puts the table into docs/benchmarks.md (section ``step``, or ``--section``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, machine, parse_variant, run_recipe_instrumented, run_variant, write_section  # noqa: E402

PHASES = ("generate", "rewards", "statistics", "loss_forward", "backward", "optimizer", "other")


def _child(recipe: str, overrides: list[str], steps: int, out: str) -> None:
    """Run the recipe for ``steps`` steps with timers; write per-step phase times as JSON to ``out``."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from rlattn.shared_prompt import prompt_groups

    acc: dict[str, float] = {}

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0

        setattr(owner, name, wrapper)

    timed(GRPOTrainer, "_generate", "generate")
    timed(GRPOTrainer, "_calculate_rewards", "rewards")
    timed(GRPOTrainer, "_compute_loss", "loss_total")
    counted = GRPOTrainer._compute_loss

    def count_tokens(self, model, inputs, *args, **kwargs):  # completion tokens the loss passes read
        acc["loss_tokens"] = acc.get("loss_tokens", 0.0) + float(inputs["completion_mask"].sum())
        acc["loss_padded"] = acc.get("loss_padded", 0.0) + float(inputs["completion_mask"].numel())
        acc["loss_batches"] = acc.get("loss_batches", 0.0) + 1
        acc["loss_prompts"] = acc.get("loss_prompts", 0.0) + float(len(prompt_groups(inputs["prompt_ids"], inputs["prompt_mask"])[0]))
        return counted(self, model, inputs, *args, **kwargs)

    GRPOTrainer._compute_loss = count_tokens
    steps_out: list[dict] = []

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            acc.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            acc["wall"] = time.perf_counter() - self.t0
            steps_out.append(dict(acc))

    def on_trainer(trainer):
        trainer.add_callback(Phases())
        timed(trainer.accelerator, "backward", "backward")
        original_log = trainer._log_credit

        def log_credit(mode, gamma, mask, sel, stats_time, *rest, **kw):
            acc["statistics"] = acc.get("statistics", 0.0) + stats_time
            return original_log(mode, gamma, mask, sel, stats_time, *rest, **kw)

        trainer._log_credit = log_credit

    cycle = [1]

    def on_trainer_and_cycle(trainer):
        on_trainer(trainer)
        a = trainer.args
        cycle[0] = max(1, a.steps_per_generation * getattr(trainer, "num_iterations", 1) // a.gradient_accumulation_steps)

    run_recipe_instrumented(recipe, steps, os.path.dirname(out), overrides, on_trainer_and_cycle,
                            on_optimizer=lambda opt: timed(opt, "step", "optimizer"))
    Path(out).write_text(json.dumps({"cycle": cycle[0], "steps": steps_out}))


def kept_steps(steps: list[dict], cycle: int) -> list[dict]:
    """The steps after the first generation cycle (warm-up), cut to whole cycles."""
    kept = steps[cycle:]
    kept = kept[: len(kept) - len(kept) % cycle]
    if not kept:
        raise SystemExit(f"--steps {len(steps)} leaves no whole generation cycle after the warm-up one "
                         f"(a cycle is {cycle} optimizer steps): use --steps {2 * cycle} or more")
    return kept


def _phases(step: dict) -> dict[str, float]:
    stats = step.get("statistics", 0.0)
    loss_fwd = max(0.0, step.get("loss_total", 0.0) - stats)
    known = {"generate": step.get("generate", 0.0), "rewards": step.get("rewards", 0.0), "statistics": stats,
             "loss_forward": loss_fwd, "backward": step.get("backward", 0.0), "optimizer": step.get("optimizer", 0.0)}
    known["other"] = max(0.0, step["wall"] - sum(known.values()))
    known["wall"] = step["wall"]
    known["loss_tokens"] = step.get("loss_tokens", 0.0)
    known["loss_padded"] = step.get("loss_padded", 0.0)
    known["prompts_per_batch"] = step.get("loss_prompts", 0.0) / max(1.0, step.get("loss_batches", 0.0))
    return known


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--variant", action="append", default=[],
                   help="name:--key=value,--key=value (repeatable); the recipe as is is the variant 'recipe'")
    p.add_argument("--write", action="store_true")
    p.add_argument("--section", default="step", help="docs/benchmarks.md section --write replaces (e.g. step_vllm)")
    p.add_argument("--child", nargs=2, metavar=("OUT", "OVERRIDES_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.recipe, json.loads(args.child[1]), args.steps, args.child[0])
        return
    variants = [("recipe", [])] + [parse_variant(v) for v in args.variant]
    rows = []
    for name, overrides in variants:
        result = run_variant(__file__, args.recipe, args.steps, overrides, f"variant {name}")
        kept = kept_steps([_phases(s) for s in result["steps"]], result["cycle"])
        cycles = len(kept) // result["cycle"]
        mean = {k: sum(s[k] for s in kept) / len(kept) for k in (*PHASES, "wall", "loss_tokens", "loss_padded", "prompts_per_batch")}
        rows.append((name, " ".join(overrides), mean, cycles, result["cycle"]))
        print(f"{name}: " + ", ".join(f"{k} {mean[k]:.2f}s" for k in (*PHASES, "wall")), flush=True)
    head = "| variant | overrides | " + " | ".join(PHASES) + " | step (s) | vs first | completion tokens in the loss (padded) | distinct prompts per loss micro-batch | loss fwd+bwd ms/token |\n|" + "---|" * (len(PHASES) + 7)
    cycle_note = ", ".join(sorted({f"{c} cycle(s) of {n} steps" for _, _, _, c, n in rows}))
    lines = [f"Machine: {machine()}.", f"Command: `{command()}`; seconds per optimizer step, mean over whole generation "
             f"cycles after the first (warm-up): {cycle_note}.", "", head]
    base = rows[0][2]["wall"]
    for name, overrides, m, _, _ in rows:
        cells = " | ".join(f"{m[k]:.2f} ({100 * m[k] / m['wall']:.0f} %)" for k in PHASES)
        per_token = 1000 * (m["loss_forward"] + m["backward"]) / m["loss_tokens"] if m["loss_tokens"] else float("nan")
        lines.append(f"| {name} | `{overrides or '-'}` | {cells} | **{m['wall']:.2f}** | {base / m['wall']:.2f}x "
                     f"| {m['loss_tokens']:.0f} ({m['loss_padded']:.0f}) | {m['prompts_per_batch']:.2f} | {per_token:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        title = "One training step, phase by phase" + ("" if args.section == "step" else f" ({args.section})")
        write_section(args.section, f"## {title} (`bench/step.py`)\n\n" + table)


if __name__ == "__main__":
    main()
