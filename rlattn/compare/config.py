"""``CompareConfig``: a grid of credit strategies × seeds, its training budget and its evaluation.

A comparison recipe (``recipes/compare/*.yaml``, flat keys, TrlParser) names the base training
recipe, the strategies (registry names or dotted paths, each optionally with its own overrides),
the seeds, the shared budget (overrides every run gets: steps, batch, completion length) and the
held-out evaluation (an evaluator recipe plus overrides). Every run of the grid trains with the
base recipe + the budget + the strategy's overrides + ``--seed s``: the same data order per seed
(TRL's sampler is seeded by ``seed``), the same budget for every strategy, its own output dir.

Strategy entries are ``name`` (a registered strategy, or a dotted path ``pkg.mod:fn``, trained
with ``--credit_strategy name``) or ``label=--key value --key value`` for a labelled variant,
e.g. ``coupled_bottom=--credit_strategy coupled --credit_select bottom``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from rlattn.utils import field_help as _h

__all__ = ["CompareConfig", "Variant", "parse_compare_args"]


@dataclass(frozen=True)
class Variant:
    """One strategy of the grid: its label and the training overrides that select it."""

    label: str
    overrides: tuple[str, ...]

    @property
    def strategy(self) -> str:
        args = list(self.overrides)
        return args[args.index("--credit_strategy") + 1] if "--credit_strategy" in args else "coupled"


@dataclass
class CompareConfig:
    """Options of ``scripts/compare.py``."""

    compare_base_recipe: str = field(default="recipes/anchor_credit.yaml", metadata=_h("The training recipe every run starts from (scripts/grpo.py's YAML)."))
    compare_strategies: list[str] = field(default_factory=lambda: ["uniform", "coupled"], metadata=_h("Strategies: a registry name or 'pkg.mod:fn', or 'label=--key value ...' for a variant with its own overrides."))
    compare_baseline: str = field(default="uniform", metadata=_h("The label every other strategy is compared with (paired, same seeds and problems)."))
    compare_seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=_h("Training seeds; each strategy trains once per seed (the seed also fixes the data order)."))
    compare_budget: str = field(default="", metadata=_h("Overrides every run gets, e.g. '--max_steps 30 --per_device_train_batch_size 8': the shared budget. max_steps must end up > 0."))
    compare_eval_recipe: str = field(default="recipes/eval/arith_heldout.yaml", metadata=_h("The evaluator recipe for the held-out set (scripts/evaluate.py's YAML)."))
    compare_eval_overrides: str = field(default="", metadata=_h("Overrides for the evaluation, e.g. '--limit 300 --torch_threads 2'."))
    compare_python: str | None = field(default=None, metadata=_h("Python that runs the training scripts (default: this one)."))
    compare_launcher: str = field(default="", metadata=_h("A launcher prefix for training, e.g. 'accelerate launch --config_file ...' (default: plain python)."))
    compare_signal: bool = field(default=False, metadata=_h("Also measure how WAAD, FAI and the anchor/preplan sets move between the starting model and each seed-0 adapter of the baseline and of the first other strategy."))
    output_dir: str = field(default="outputs/compare", metadata=_h("Runs under <output_dir>/runs/<label>/seed<s>; evaluation under <output_dir>/eval; report.md/json and plots here."))

    def __post_init__(self):
        self.variants()  # bad entries fail at parse time
        if not self.compare_seeds:
            raise ValueError("compare_seeds is empty: give at least one seed (3 or more for an interval over seeds)")
        if len(set(self.compare_seeds)) != len(self.compare_seeds):
            raise ValueError(f"compare_seeds={self.compare_seeds!r} repeats a seed")
        labels = [v.label for v in self.variants()]
        if self.compare_baseline not in labels:
            raise ValueError(f"compare_baseline={self.compare_baseline!r} is not one of the strategies {labels}")
        for key in ("compare_base_recipe", "compare_eval_recipe"):
            if not Path(getattr(self, key)).is_file():
                raise FileNotFoundError(f"{key}={getattr(self, key)!r}: no such file")

    def variants(self) -> list[Variant]:
        out = []
        for entry in self.compare_strategies:
            label, sep, flags = entry.partition("=")
            label = label.strip()
            if not label or any(c in label for c in " /"):
                raise ValueError(f"compare_strategies entry {entry!r}: the label must be a non-empty word (no spaces or '/')")
            overrides = tuple(shlex.split(flags)) if sep else ("--credit_strategy", label)
            if "--credit_strategy" not in overrides:
                overrides = ("--credit_strategy", "coupled", *overrides)
            out.append(Variant(label=label.replace(":", "-"), overrides=overrides))
        labels = [v.label for v in out]
        if len(set(labels)) != len(labels):
            raise ValueError(f"compare_strategies={self.compare_strategies!r} repeats a label")
        if not out:
            raise ValueError("compare_strategies is empty")
        return out

    def budget(self) -> list[str]:
        return shlex.split(self.compare_budget)


def parse_compare_args(argv=None) -> CompareConfig:
    """``CompareConfig`` from ``[recipe.yaml] [--key value ...]``."""
    import sys

    from trl import TrlParser

    from rlattn.utils import normalise_argv

    argv = normalise_argv(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser((CompareConfig,)).parse_args_and_config(argv)
    return config
