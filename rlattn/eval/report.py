"""Writing an :class:`EvalReport`: ``report.md``, ``report.json`` and PNG plots.

Why these three: ``report.md`` is what a person reads (protocol first, then one summary table
of avg@n with deltas against the first model, then the **paired differences** against the first
model with their 95 % bootstrap intervals, wins/losses/ties and sign-test p-values, then
per-dataset tables of every metric, then every ungraded sample; with ``grading: [strict,
lenient]`` the summary, the paired table and the grading-dependent rows appear per grading);
``report.json`` is the same numbers for scripts (rates as fractions);
the plots are what a person looks at first (``plots/accuracy.png``: avg@n per dataset, one bar
per model; ``plots/pass_at_k.png``: pass@k (solid) and maj@k (dashed) against k, one panel per
dataset). Matplotlib runs headless (Agg backend).

Deltas are in percentage points against the first model (``+1.5``), and so are the paper's
Table 4 rows (``paper_table``), quoted as published (arXiv 2510.13554 v2, docs/paper.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["PAPER_TABLE4", "render_markdown", "write_plots", "write_report"]

#: Table 4 of the paper (avg@16 on AIME, pass@1 elsewhere), percent, by ``paper_table`` name:
#: the five sets in ``PAPER_TABLE4_COLUMNS`` order, then the published average.
PAPER_TABLE4_COLUMNS = ("aime24", "aime25", "amc23", "math500", "olympiadbench")
PAPER_TABLE4: dict[str, dict[str, tuple[float, ...]]] = {
    "qwen3_4b_1k": {
        "GRPO": (8.4, 5.2, 55.1, 74.2, 42.8, 37.1), "random": (8.7, 5.5, 55.2, 74.4, 42.0, 37.1),
        "high-entropy": (8.3, 4.9, 55.5, 74.8, 42.5, 37.2), "global": (9.3, 5.8, 57.6, 75.5, 43.0, 38.2),
        "local": (10.5, 5.9, 58.4, 74.9, 43.1, 38.6), "coupled": (10.7, 7.8, 57.4, 75.8, 44.1, 39.2),
    },
    "qwen3_8b_1k": {
        "GRPO": (9.3, 7.3, 59.1, 77.1, 44.2, 39.4), "random": (8.9, 8.1, 60.1, 77.4, 43.3, 39.6),
        "high-entropy": (8.7, 7.7, 60.4, 78.0, 45.6, 40.1), "global": (10.8, 11.5, 63.1, 78.9, 46.1, 42.1),
        "local": (10.1, 9.3, 62.9, 78.4, 45.9, 41.3), "coupled": (11.4, 12.3, 65.4, 79.7, 47.0, 43.2),
    },
    "qwen3_4b_8k": {
        "GRPO": (19.5, 16.1, 57.6, 81.0, 49.9, 44.8), "random": (18.0, 16.6, 57.1, 82.0, 50.0, 44.7),
        "high-entropy": (19.3, 15.4, 57.8, 81.2, 48.6, 44.5), "global": (21.7, 19.5, 61.1, 82.1, 51.2, 47.1),
        "local": (22.4, 20.4, 59.2, 82.5, 51.5, 47.2), "coupled": (22.0, 19.9, 59.3, 82.9, 52.2, 47.3),
    },
}

_MAX_LISTED_UNGRADED = 100


def write_report(report, plots: bool = True) -> dict[str, str]:
    """Write report.json, report.md and (``plots``) the PNGs into ``report.output_dir``."""
    out = Path(report.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = dict(report.files)
    files["report_json"] = str(out / "report.json")
    files["report_md"] = str(out / "report.md")
    if plots:
        files.update(write_plots(report, out / "plots"))
    report.files = files
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return files


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _delta(value: float, base: float, scale: float = 100.0, digits: int = 1) -> str:
    d = (value - base) * scale
    if abs(d) < 0.5 * 10 ** (-digits):
        return "±0"
    return f"{d:+.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: bool = True, text_cols: int = 1) -> list[str]:
    """A markdown table; ``numeric`` right-aligns every column but the first ``text_cols``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < text_cols or not numeric else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _metric_rows(ds: dict, gradings: list[str]) -> list[tuple[str, str, str, str]]:
    """(grading, key, label, kind) for one dataset's table; kind: rate | tokens | count. Rows that
    do not depend on the grading come once, under the headline grading."""
    n, ks = ds["n"], ds["k"]
    rows = []
    for g in gradings:
        tag = f", {g}" if len(gradings) > 1 else ""
        rows += [(g, f"avg@{n}", f"avg@{n} (%{tag})", "rate")]
        rows += [(g, f"pass@{k}", f"pass@{k} (%{tag})", "rate") for k in ks]
        rows += [(g, f"maj@{k}", f"maj@{k} (%{tag})", "rate") for k in ks]
    head = gradings[0]
    rows += [
        (head, "format_rate", "format: non-empty \\boxed{} (%)", "rate"),
        (head, "mean_length", "mean response length (tokens)", "tokens"),
        (head, "truncation_rate", "truncated: no EOS within max_new_tokens (%)", "rate"),
    ]
    rows += [(g, "ungraded", "ungraded samples (count" + (f", {g})" if len(gradings) > 1 else ")"), "count") for g in gradings]
    return rows


def _fmt(value, kind: str) -> str:
    if kind == "rate":
        return _pct(value)
    if kind == "tokens":
        return f"{value:.1f}"
    return str(value)


def _fmt_delta(value, base, kind: str) -> str:
    if kind == "rate":
        return _delta(value, base)
    if kind == "tokens":
        return _delta(value, base, scale=1.0)
    return f"{value - base:+d}" if value != base else "±0"


def render_markdown(report) -> str:
    """The text of report.md."""
    p = report.protocol
    labels = report.labels
    base = labels[0]
    datasets = report.datasets
    lines = [
        "# Evaluation report",
        "",
        f"{len(labels)} model(s) on {len(datasets)} dataset(s). Deltas (in parentheses) are against the first model, "
        f"**{base}**: percentage points for rates, tokens for lengths. Samples: {report.counts.get('generated', 0)} generated this run, {report.counts.get('reused', 0)} reused "
        "from an earlier run.",
        "",
        "## Protocol",
        "",
    ]
    grading = p["grading"]
    proto_rows = [
        ["datasets (problems, samples per problem n)", ", ".join(f"{d['name']} ({d['problems']}, n={d['n']})" for d in datasets)],
        ["k of pass@k / maj@k", "; ".join(f"{d['name']}: {', '.join(map(str, d['k']))}" for d in datasets)],
        ["temperature", f"{p['temperature']:g}" + (" (greedy)" if p["temperature"] == 0 else "")],
        ["top_p", f"{p['top_p']:g}"],
        ["top_k", p["top_k"]],
        ["max_new_tokens", str(p["max_new_tokens"])],
        ["prompt template", f"`{p['prompt_template']}`"],
        ["limit (problems per dataset)", "all" if p["limit"] is None else str(p["limit"])],
        ["seed", str(p["seed"])],
        ["backend", p["backend"]],
        ["grading", f"{grading['grader']}; answer = {_md_escape(grading['answer'])}; {grading['timeout_s']:g} s bound per sample"],
    ]
    lines += _table(["setting", "value"], [[a, _md_escape(b)] for a, b in proto_rows], numeric=False)
    lines += ["", "## Models", ""]
    lines += _table(
        ["label", "spec", "kind", "loaded from"],
        [[f"**{m['label']}**" if i == 0 else m["label"], f"`{m['spec']}`", m["kind"] + (f" on `{m['base']}`" if m.get("base") else ""), f"`{m['path']}`"]
         for i, m in enumerate(report.models)],
        numeric=False,
    )

    # ---- summary: avg@n per dataset and the mean over datasets (one table per grading) ----
    gradings = report.gradings
    by_grading = report.results_by_grading or {gradings[0]: report.results}
    lines += ["", "## Summary: avg@n (%)", "", "avg@n is pass@1 averaged over the n samples of each problem; mean = unweighted mean over datasets.", ""]
    header = ["model"] + [f"{d['name']} (avg@{d['n']})" for d in datasets] + (["mean"] if len(datasets) > 1 else [])
    for i, g in enumerate(gradings):
        results = by_grading[g]
        if len(gradings) > 1:
            lines += ([""] if i else []) + [f"Grading **{g}**" + (" (headline)" if i == 0 else "") + ":", ""]
        rows = []
        base_vals = [results[base][d["name"]][f"avg@{d['n']}"] for d in datasets]
        for label in labels:
            vals = [results[label][d["name"]][f"avg@{d['n']}"] for d in datasets]
            if len(datasets) > 1:
                vals_all, base_all = vals + [sum(vals) / len(vals)], base_vals + [sum(base_vals) / len(base_vals)]
            else:
                vals_all, base_all = vals, base_vals
            cells = [_pct(v) if label == base else f"{_pct(v)} ({_delta(v, b)})" for v, b in zip(vals_all, base_all)]
            rows.append([label] + cells)
        lines += _table(header, rows)

    paired = _paired_section(report)
    if paired:
        lines += [""] + paired

    paper = _paper_section(report)
    if paper:
        lines += [""] + paper

    # ---- per dataset ----
    lines += ["", "## Per dataset", ""]
    for d in datasets:
        name = d["name"]
        lines += [f"### {name}: {d['problems']} problems x n={d['n']}", ""]
        header = ["metric"] + [lbl if lbl == base else f"{lbl} (Δ)" for lbl in labels]
        rows = []
        for g, key, text, kind in _metric_rows(d, gradings):
            b = by_grading[g][base][name][key]
            cells = []
            for lbl in labels:
                v = by_grading[g][lbl][name][key]
                cells.append(_fmt(v, kind) if lbl == base else f"{_fmt(v, kind)} ({_fmt_delta(v, b, kind)})")
            rows.append([text] + cells)
        lines += _table(header, rows) + [""]

    # ---- ungraded ----
    lines += ["## Ungraded samples", ""]
    if not report.ungraded:
        lines += ["None: every sample was graded.", ""]
    else:
        lines += [
            f"{len(report.ungraded)} sample(s) could not be graded (grading timed out, the grader worker died, or the gold "
            "answer is unusable). They count as **not correct** in every rate above. "
            + (f"The first {_MAX_LISTED_UNGRADED} are listed; all are in report.json." if len(report.ungraded) > _MAX_LISTED_UNGRADED else ""),
            "",
        ]
        lines += _table(
            ["model", "dataset", "problem id", "sample", "extracted answer"],
            [[_md_escape(u["model_label"]), u["dataset"], _md_escape(u["problem_id"]), str(u["sample_index"]),
              f"`{_md_escape((u['answer'] or '')[:80])}`" if u["answer"] else "(none)"] for u in report.ungraded[:_MAX_LISTED_UNGRADED]],
            numeric=False,
        ) + [""]

    # ---- plots and files ----
    plot_files = [(k, v) for k, v in report.files.items() if k.startswith("plot_")]
    if plot_files:
        lines += ["## Plots", ""]
        out = Path(report.output_dir)
        for key, path in plot_files:
            rel = Path(path).relative_to(out) if Path(path).is_relative_to(out) else Path(path)
            lines += [f"![{key[5:]}]({rel.as_posix()})", ""]
    lines += [
        "## What the metrics mean",
        "",
        "- **avg@n**: mean over problems of (correct samples / n), i.e. pass@1 estimated from n samples.",
        "- **pass@k**: unbiased estimator 1 - C(n-c, k) / C(n, k) per problem (c correct of n), averaged over problems.",
        "- **maj@k**: majority vote over each problem's first k samples; each sample votes with its graded answer (the `\\boxed{}` "
        "content; lenient, without a box: the last number), grouped by normalised string; ties go to the answer seen first; "
        "samples without an answer do not vote.",
        "- **paired difference**: per problem, the model's score (correct / n) minus the first model's on the same problem; Δ is "
        "its mean (the avg@n delta); the interval resamples problems; the sign test counts problems won and lost.",
        "- **format**: share of samples with a non-empty `\\boxed{}`. **truncated**: no EOS within max_new_tokens. "
        "**length**: response tokens before EOS.",
        "",
        f"Per-sample records (completion, graded answer, boxed, gold, correct per grading): `{Path(report.files.get('samples', 'samples.jsonl')).name}`.",
        "",
    ]
    return "\n".join(lines)


def _signed(x: float) -> str:
    """A fraction as signed percentage points, ``±0`` when it rounds to zero."""
    return _delta(x, 0.0)


def _p_value(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _paired_section(report) -> list[str]:
    """'Paired differences vs <first model>': one row per (grading,) dataset and model after the first."""
    paired = report.paired or {}
    rows = paired.get("rows") or []
    if not rows:
        return []
    several = len(report.gradings) > 1
    lines = [
        f"## Paired differences vs {_md_escape(paired['baseline'])}",
        "",
        f"Per problem: the model's score (correct samples / n) minus **{paired['baseline']}**'s on the same problem. Δ is the mean "
        f"of those differences in percentage points (the avg@n delta above). 95 % CI: percentile bootstrap over problems "
        f"({paired['resamples']} resamples, seed {paired['seed']}). Wins / losses / ties: problems where the model scores higher / "
        "lower / the same. p: two-sided exact sign test on wins vs losses (for n = 1, McNemar's exact test).",
        "",
    ]
    header = ["dataset", "model"] + (["grading"] if several else []) + ["Δ (points)", "95 % CI", "wins / losses / ties", "p"]
    body = []
    for r in rows:
        cells = [r["dataset"], _md_escape(r["model"])] + ([r["grading"]] if several else [])
        cells += [_signed(r["delta"]), f"[{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]",
                  f"{r['wins']} / {r['losses']} / {r['ties']}", _p_value(r["p_value"])]
        body.append(cells)
    return lines + _table(header, body, text_cols=3 if several else 2)


def _paper_section(report) -> list[str]:
    name = report.config.get("paper_table", "none")
    if name not in PAPER_TABLE4:
        return []
    measured = {d["name"]: d for d in report.datasets}
    cols = list(PAPER_TABLE4_COLUMNS)
    lines = [
        f"## Paper comparison: Table 4, {name} (arXiv 2510.13554 v2)",
        "",
        "The paper reports AIME avg@16 and pass@1 elsewhere; its sampling parameters are not stated. Measured rows use "
        "this run's protocol above; '-' marks a set this run did not evaluate.",
        "",
    ]
    header = ["row"] + list(cols) + ["avg (5 sets)"]
    rows = []
    for method, values in PAPER_TABLE4[name].items():
        rows.append([f"paper: {method}"] + [f"{v:.1f}" for v in values])
    for label in report.labels:
        cells, vals = [], []
        for c in cols:
            if c in measured:
                v = report.results[label][c][f"avg@{measured[c]['n']}"]
                vals.append(v)
                cells.append(_pct(v))
            else:
                cells.append("-")
        avg = _pct(sum(vals) / len(vals)) if len(vals) == len(cols) else "-"
        rows.append([f"measured: {label}"] + cells + [avg])
    return lines + _table(header, rows)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def write_plots(report, plot_dir: Path) -> dict[str, str]:
    """plots/accuracy.png and plots/pass_at_k.png; returns {"plot_accuracy": path, ...}."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    labels, datasets = report.labels, report.datasets
    colors = plt.get_cmap("tab10").colors
    files = {}

    # ---- accuracy: avg@n per dataset, one bar per model ----
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(datasets) * max(1, len(labels) / 2) + 2), 4.5))
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(datasets))]
        ys = [100 * report.results[label][d["name"]][f"avg@{d['n']}"] for d in datasets]
        bars = ax.bar(xs, ys, width=width * 0.95, label=label, color=colors[i % len(colors)])
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels([f"{d['name']}\n(avg@{d['n']}, {d['problems']} problems)" for d in datasets], fontsize=9)
    ax.set_ylabel("avg@n (%)")
    top = max([100 * report.results[lbl][d["name"]][f"avg@{d['n']}"] for lbl in labels for d in datasets] + [1.0])
    ax.set_ylim(0, min(100.0, top * 1.2 + 2))
    ax.set_title(f"Accuracy per dataset (T={report.protocol['temperature']:g}, top_p={report.protocol['top_p']:g}, "
                 f"max {report.protocol['max_new_tokens']} tokens)")
    ax.legend(fontsize=9, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = plot_dir / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files["plot_accuracy"] = str(path)

    # ---- pass@k (solid) and maj@k (dashed) against k, one panel per dataset ----
    cols = min(3, len(datasets))
    rows_n = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for idx, d in enumerate(datasets):
        ax = axes[idx // cols][idx % cols]
        ks = d["k"]
        for i, label in enumerate(labels):
            res = report.results[label][d["name"]]
            color = colors[i % len(colors)]
            ax.plot(ks, [100 * res[f"pass@{k}"] for k in ks], marker="o", color=color, label=f"{label} pass@k")
            ax.plot(ks, [100 * res[f"maj@{k}"] for k in ks], marker="x", linestyle="--", color=color, label=f"{label} maj@k")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_title(f"{d['name']} (n={d['n']}, {d['problems']} problems)", fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("%")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    for idx in range(len(datasets), rows_n * cols):
        axes[idx // cols][idx % cols].axis("off")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8, frameon=False)
    fig.suptitle("pass@k (solid) and maj@k (dashed)")
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(names) / 4), 1, 1))
    path = plot_dir / "pass_at_k.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files["plot_pass_at_k"] = str(path)
    return files
