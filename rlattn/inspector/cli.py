"""The inspector's command line, behind ``scripts/inspect_credit.py`` (parse → run → print).

The parser is TRL's ``TrlParser`` over (:class:`InspectArguments`, ``rlattn.config.AttnCreditConfig``):
the ``credit_*`` and ``attn_*`` options, with their defaults, help and checks, are the training
config's own, turned into configs by its ``credit_config()`` and ``attention_stats_config()``, so
nothing is declared twice and the page marks what a run with the same settings amplifies. A YAML
file of these keys may come first, as for the other scripts (``rlattn.utils.normalise_argv``);
options override it. Both ``--record_index`` and ``--record-index`` spellings work (HfArgumentParser).

Repeatable options: HfArgumentParser gives a list field ``nargs="+"``, so ``--strategy a b`` works,
but argparse keeps only the last of ``--strategy a --strategy b``; :func:`merge_repeated` rewrites
the repeated form into the first, so both forms work.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from rlattn.models import DEFAULT_MODEL

from .records import load_record_traces
from .report import write_report
from .trace import SIGNALS, generate_trace, load_model
from rlattn.utils import field_help as _h

PROG = "scripts/inspect_credit.py"
USAGE = (f"{PROG} [recipe.yaml] (--prompt TEXT ... | --dataset NAME [--index I ...] | --records FILE "
         "[--record-index I ...]) [--model SPEC] [--strategy NAME ...] [--credit_* / --attn_* VALUE ...] [--out DIR]")
REPEATABLE = ("prompt", "index", "record_index", "strategy")  # the list fields of InspectArguments


@dataclass
class InspectArguments:
    """What to inspect and where the report goes (the credit and attention settings are AttnCreditConfig's)."""

    _argument_group_name = "inspector (the credit_* and attn_* options above are AttnCreditConfig's)"

    # --- the trace source: exactly one of prompt, dataset, records ---
    prompt: list[str] | None = field(default=None, metadata=_h("User prompts to answer greedily, one trace each (repeatable)."))
    dataset: str | None = field(default=None, metadata=_h("A dataset for rlattn.data.load_dataset, e.g. gsm8k_test."))
    index: list[int] | None = field(default=None, metadata=_h("Rows of --dataset (repeatable; default 0)."))
    records: str | None = field(default=None, metadata=_h("Rollout records (rollouts.jsonl / .parquet) written by the trainer; only the model's tokenizer is loaded."))
    record_index: list[int] | None = field(default=None, metadata=_h("Records of --records (repeatable; default 0)."))
    # --- model and generation ---
    model: str = field(default=DEFAULT_MODEL, metadata=_h("Model path, hub id, adapter dir or embedded:<name>. For --records: the run's model, whose tokenizer decodes the records' token ids."))
    max_new_tokens: int = field(default=160, metadata=_h("Greedy generation length limit (generation stops at EOS)."))
    chat_template: bool = field(default=True, metadata=_h("Wrap --prompt as a chat user turn; --no-chat-template feeds it as raw text."))
    # --- the report ---
    strategy: list[str] | None = field(default=None, metadata=_h("Credit strategies to show side by side (repeatable). Default: credit_strategy (for --records: the recorded one)."))
    signal: str = field(default="gamma", metadata=_h(f"Initial colouring: {' | '.join(SIGNALS)} (the page can switch)."))
    out: str = field(default="inspect_out", metadata=_h("Output folder: inspector.html, trace<i>_signals.png, trace<i>_heads.png."))
    plots: bool = field(default=True, metadata=_h("Write the PNG plots (--no-plots: skip them)."))
    embed_plots: bool = field(default=True, metadata=_h("Embed the PNGs in the page (--no-embed-plots: write them only)."))

    def __post_init__(self):
        sources = [f"--{name}" for name in ("prompt", "dataset", "records") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError(f"give exactly one trace source of --prompt, --dataset, --records (got {', '.join(sources) or 'none'})")
        if self.index and not self.dataset:
            raise ValueError("--index needs --dataset")
        if self.record_index and not self.records:
            raise ValueError("--record-index needs --records")
        if self.signal not in SIGNALS:
            raise ValueError(f"signal={self.signal!r} is invalid; allowed: {', '.join(SIGNALS)}")


def merge_repeated(argv: Sequence[str]) -> list[str]:
    """``--strategy a --strategy b`` (or ``--strategy=a``) -> ``--strategy a b``, for each REPEATABLE field."""
    spellings = {f"--{n}": n for n in REPEATABLE} | {f"--{n.replace('_', '-')}": n for n in REPEATABLE}
    rest: list[str] = []
    merged: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        i += 1
        if flag not in spellings:
            rest.append(argv[i - 1])
            continue
        values = merged.setdefault(spellings[flag], [])
        if eq:
            values.append(value)
            continue
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
    for name, values in merged.items():
        rest += [f"--{name}", *values]
    return rest


def parse_inspect_args(argv: Sequence[str] | None = None):
    """``(InspectArguments, AttnCreditConfig)`` from ``[recipe.yaml] [--key value ...]``; a bad
    argument exits with status 2 and a message naming it (argparse's convention)."""
    from trl import TrlParser

    from rlattn.config import AttnCreditConfig
    from rlattn.utils import normalise_argv

    parser = TrlParser((InspectArguments, AttnCreditConfig), prog=PROG, usage=USAGE,
                       description="Render WAAD, FAI and credit γ of traces as a self-contained HTML page and PNG plots.")
    # AttnCreditConfig is a TrainingArguments: it wants an output dir and hardware it can check. The
    # inspector writes nothing there, and runs its model on the CPU.
    parser.set_defaults(output_dir=InspectArguments.out, use_cpu=True)
    try:
        args, config = parser.parse_args_and_config(merge_repeated(normalise_argv(sys.argv[1:] if argv is None else argv)))
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return args, config


def _jobs(args: InspectArguments) -> list[tuple[Any, str, dict]]:
    """(prompt, label, meta) of each trace to generate: the --prompt texts or the --dataset rows."""
    if args.prompt:
        return [(text, f"prompt {j}", {"model": args.model, "source": "--prompt"}) for j, text in enumerate(args.prompt)]
    from rlattn.data import load_dataset

    ds = load_dataset(args.dataset)
    jobs = []
    for i in args.index or [0]:
        if not 0 <= i < len(ds):
            raise ValueError(f"--index {i} is out of range: {args.dataset} has {len(ds)} rows (0..{len(ds) - 1})")
        jobs.append((ds[i]["prompt"], f"{args.dataset}[{i}]",
                     {"model": args.model, "source": f"{args.dataset}[{i}]", "reference_answer": ds[i].get("solution")}))
    return jobs


def run_inspect(args: InspectArguments, config) -> dict[str, Any]:
    """The traces ``args`` ask for, inspected with ``config``'s credit and attention settings, written
    as a report into ``args.out``. Returns :func:`write_report`'s paths."""
    credit = config.credit_config()
    if args.records:
        traces = load_record_traces(args.records, args.record_index or [0], strategies=args.strategy,
                                    credit_config=credit, model=args.model)
    else:
        jobs = _jobs(args)
        model, tokenizer, _ = load_model(args.model)
        traces = [
            generate_trace(model, tokenizer, prompt, max_new_tokens=args.max_new_tokens, chat=args.chat_template,
                           strategies=args.strategy or [config.credit_strategy], credit_config=credit,
                           stats_config=config.attention_stats_config(), label=label, meta=meta)
            for prompt, label, meta in jobs
        ]
    return write_report(traces, args.out, strategies=args.strategy, signal=args.signal, plots=args.plots,
                        embed_plots=args.embed_plots)


def written_lines(written: dict[str, Any]) -> list[str]:
    """What the script prints: the page (with its size), then each PNG."""
    page = written["html"]
    return [f"wrote {page} ({page.stat().st_size / 1024:.0f} KiB)"] + [f"wrote {png}" for png in written["pngs"]]
