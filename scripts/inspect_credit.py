"""Inspect attention credit on a trace: which response tokens get extra credit, and why.

    python scripts/inspect_credit.py --prompt "What is 17 * 23?"                     # embedded model
    python scripts/inspect_credit.py --dataset gsm8k_test --index 3 --strategy coupled --strategy local_chunk
    python scripts/inspect_credit.py --records out/rollouts.jsonl --record-index 0 --record-index 5

Writes <out>/inspector.html (self-contained: open it in any browser, offline) and PNG plots of WAAD
and FAI along each response and of head spans per layer. The library side is ``rlattn.inspect``
(``docs/inspector.md``).
"""

# Named inspect_credit.py, not inspect.py: Python puts scripts/ first on sys.path for every script
# run from it, so a scripts/inspect.py would shadow the standard library's `inspect` (imported by
# torch, dataclasses, typing_extensions...) for grpo.py and evaluate.py too. Scripts never import
# each other, so the folder is also taken off sys.path here.
import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/inspect_credit.py",
        description="Render WAAD, FAI and credit γ of a trace as a self-contained HTML page and PNG plots.",
    )
    src = p.add_argument_group("trace source (one of)")
    src.add_argument("--prompt", action="append", help="A user prompt to answer greedily (repeatable: one trace each).")
    src.add_argument("--dataset", help="A dataset name for rlattn.data.load_dataset, e.g. gsm8k_test.")
    src.add_argument("--index", type=int, action="append", help="Row of --dataset (repeatable; default 0).")
    src.add_argument("--records", help="Rollout records (rollouts.jsonl / .parquet) written by the trainer; no model needed.")
    src.add_argument("--record-index", type=int, action="append", help="Record of --records (repeatable; default 0).")
    p.add_argument("--model", default=None, help="Model path, hub id or embedded:<name> (default: the embedded SmolLM2-135M-Instruct).")
    p.add_argument("--strategy", action="append", help="Credit strategy to show (repeatable: side by side). Default: coupled "
                   "(for --records: the recorded one).")
    p.add_argument("--signal", default="gamma", help="Initial colouring: gamma, waad, delta or fai (the page can switch).")
    p.add_argument("--max-new-tokens", type=int, default=160, help="Greedy generation length limit.")
    p.add_argument("--no-chat-template", action="store_true", help="Feed --prompt as raw text instead of a chat user turn.")
    p.add_argument("--out", default="inspect_out", help="Output folder (inspector.html, trace<i>_signals.png, trace<i>_heads.png).")
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots.")
    p.add_argument("--no-embed-plots", action="store_true", help="Write the PNGs but do not embed them in the page.")
    c = p.add_argument_group("credit and attention settings (as the YAML's credit_* / attn_* keys)")
    c.add_argument("--credit-quantile", type=float, default=0.4)
    c.add_argument("--credit-gamma", type=float, default=1.5)
    c.add_argument("--credit-alpha", type=float, default=0.5)
    c.add_argument("--credit-k", type=int, default=3)
    c.add_argument("--credit-combine", default="sum")
    c.add_argument("--credit-seed", type=int, default=0)
    c.add_argument("--attn-window", type=int, default=10)
    c.add_argument("--attn-num-layers", type=int, default=5)
    c.add_argument("--attn-layers", type=int, nargs="+", default=None)
    args = p.parse_args(argv)
    sources = [name for name, v in (("--prompt", args.prompt), ("--dataset", args.dataset), ("--records", args.records)) if v]
    if len(sources) != 1:
        p.error(f"give exactly one trace source of --prompt, --dataset, --records (got {', '.join(sources) or 'none'})")
    if args.index and not args.dataset:
        p.error("--index needs --dataset")
    if args.record_index and not args.records:
        p.error("--record-index needs --records")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from rlattn import inspect as ri
    from rlattn.credit import AttentionStatsConfig, CreditConfig

    # --- configs ---------------------------------------------------------------------------
    credit = CreditConfig(quantile=args.credit_quantile, gamma=args.credit_gamma, alpha=args.credit_alpha,
                          k=args.credit_k, combine=args.credit_combine, seed=args.credit_seed)
    stats = AttentionStatsConfig(window=args.attn_window, num_layers=args.attn_num_layers, layers=args.attn_layers)

    # --- traces ----------------------------------------------------------------------------
    if args.records:
        traces = ri.load_record_traces(args.records, args.record_index or [0], strategies=args.strategy,
                                       credit_config=credit, model=args.model)
    else:
        from rlattn.models import DEFAULT_MODEL

        model_name = args.model or DEFAULT_MODEL
        model, tokenizer, _ = ri.load_model(model_name)
        strategies = args.strategy or ["coupled"]
        jobs = []
        if args.dataset:
            from rlattn.data import load_dataset

            ds = load_dataset(args.dataset)
            for i in args.index or [0]:
                if not 0 <= i < len(ds):
                    raise SystemExit(f"--index {i} is out of range: {args.dataset} has {len(ds)} rows (0..{len(ds) - 1})")
                jobs.append((ds[i]["prompt"], f"{args.dataset}[{i}]", {"model": model_name, "source": f"{args.dataset}[{i}]",
                                                                      "reference_answer": ds[i].get("solution")}))
        else:
            for j, text in enumerate(args.prompt):
                jobs.append((text, f"prompt {j}", {"model": model_name, "source": "--prompt"}))
        traces = [
            ri.generate_trace(model, tokenizer, prompt, max_new_tokens=args.max_new_tokens, chat=not args.no_chat_template,
                              strategies=strategies, credit_config=credit, stats_config=stats, label=label, meta=meta)
            for prompt, label, meta in jobs
        ]

    # --- render ----------------------------------------------------------------------------
    written = ri.write_report(traces, args.out, strategies=args.strategy, signal=args.signal,
                              plots=not args.no_plots, embed_plots=not args.no_embed_plots)
    print(f"wrote {written['html']} ({written['html'].stat().st_size / 1024:.0f} KiB)")
    for png in written["pngs"]:
        print(f"wrote {png}")
    return written


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:  # bad input: a one-line message, not a traceback
        sys.exit(f"scripts/inspect_credit.py: error: {err}")
