"""The comparison's report: accuracy per strategy with intervals, paired differences against the
baseline, learning curves, cost per run (report.md, report.json, plots/*.png).

Statistics (rlattn.eval.stats):
- a strategy's accuracy: per seed, the mean over held-out problems of each problem's score (its
  correct samples / n); across seeds, the mean and a 95 % interval from the two-stage bootstrap
  (seeds with replacement, then problems within each seed);
- a paired difference: per seed s and problem i, d = score(strategy, s, i) − score(baseline, s, i),
  the same problems and the same training seed (so the same data order); the mean over seeds of
  the per-seed means, with the same two-stage bootstrap interval, and a sign count over seeds
  (seeds where the strategy's mean is above / below / equal to the baseline's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["per_problem_scores", "write_report"]


def per_problem_scores(samples_path: Path, grading: str) -> dict[str, dict[str, dict[str, float]]]:
    """``scores[model_label][dataset][problem_id]`` = mean correctness over the problem's samples
    (ungraded samples left out; a problem with none graded is left out)."""
    sums: dict = {}
    for line in samples_path.read_text().splitlines():
        r = json.loads(line)
        correct = r["grades"][grading]["correct"] if "grades" in r else r.get("correct")
        if correct is None:
            continue
        key = (r["model_label"], r["dataset"], str(r["problem_id"]))
        s, n = sums.get(key, (0.0, 0))
        sums[key] = (s + float(correct), n + 1)
    out: dict = {}
    for (model, dataset, pid), (s, n) in sums.items():
        out.setdefault(model, {}).setdefault(dataset, {})[pid] = s / n
    return out


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.is_file() else []


def _curve(entries: list[dict], key: str) -> dict[int, float]:
    return {int(e["step"]): float(e[key]) for e in entries if key in e and "step" in e and "loss" in e}


def _cost(entries: list[dict], wall_s: float) -> dict:
    steps = [e for e in entries if "loss" in e]
    frac = [e["credit/stats_time_frac"] for e in steps if "credit/stats_time_frac" in e]
    extra = [e["credit/extra_forward"] for e in steps if "credit/extra_forward" in e]
    step_time = [e["step_time"] for e in steps if "step_time" in e]
    runtime = next((e["train_runtime"] for e in entries if "train_runtime" in e), None)
    return {"wall_s": wall_s, "train_runtime_s": runtime,
            "step_time_s": sum(step_time) / len(step_time) if step_time else None,
            "credit_time_frac": sum(frac) / len(frac) if frac else None,
            "extra_forward_frac": sum(extra) / len(extra) if extra else None}


def _pct(x):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def write_report(config, runs, infos, eval_report, out: Path, signal=None) -> dict:
    from rlattn.eval.stats import paired_bootstrap_grouped

    grading_list = eval_report.gradings
    seeds = list(config.compare_seeds)
    labels = [v.label for v in config.variants()]
    base = config.compare_baseline
    samples = Path(eval_report.output_dir) / "samples.jsonl"
    datasets = [d["name"] for d in eval_report.datasets]
    boot = dict(resamples=10_000, seed=0)
    result: dict = {"config": {k: getattr(config, k) for k in config.__dataclass_fields__}, "gradings": grading_list,
                    "datasets": datasets, "seeds": seeds, "strategies": labels, "baseline": base,
                    "accuracy": {}, "paired": {}, "curves": {}, "cost": {}, "signal": signal}
    for grading in grading_list:
        scores = per_problem_scores(samples, grading)
        for dataset in datasets:
            start = scores.get("start", {}).get(dataset, {})
            problems = sorted(start)
            acc = {"start": {"per_seed": {}, "mean": sum(start.values()) / len(start) if start else math.nan}}
            per_label = {}
            for label in labels:
                per_seed = {s: scores.get(f"{label}/seed{s}", {}).get(dataset, {}) for s in seeds}
                rows = [[per_seed[s][p] for p in problems if p in per_seed[s]] for s in seeds]
                mean, lo, hi = paired_bootstrap_grouped([r for r in rows], **boot) if all(rows) else (math.nan,) * 3
                acc[label] = {"per_seed": {str(s): sum(r) / len(r) for s, r in zip(seeds, rows) if r},
                              "mean": mean, "ci": [lo, hi]}
                per_label[label] = per_seed
            paired = {}
            for label in labels:
                if label == base:
                    continue
                diffs = [[per_label[label][s][p] - per_label[base][s][p] for p in problems
                          if p in per_label[label][s] and p in per_label[base][s]] for s in seeds]
                if not all(diffs):
                    continue
                delta, lo, hi = paired_bootstrap_grouped(diffs, **boot)
                per_seed = [sum(d) / len(d) for d in diffs]
                paired[label] = {"delta": delta, "ci": [lo, hi], "per_seed": dict(zip(map(str, seeds), per_seed)),
                                 "seeds_up": sum(d > 0 for d in per_seed), "seeds_down": sum(d < 0 for d in per_seed),
                                 "seeds_equal": sum(d == 0 for d in per_seed)}
            result["accuracy"].setdefault(grading, {})[dataset] = acc
            result["paired"].setdefault(grading, {})[dataset] = paired
    for run, info in zip(runs, infos):
        entries = _metrics(run.output_dir)
        key = f"{run.variant.label}/seed{run.seed}"
        result["curves"][key] = {k: _curve(entries, k) for k in ("reward", "frac_reward_zero_std", "completions/clipped_ratio")}
        result["cost"][key] = _cost(entries, info["wall_s"])
    (out / "report.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "report.md").write_text(_markdown(result))
    _plots(result, out / "plots")
    return result


def _markdown(r: dict) -> str:
    seeds = r["seeds"]
    lines = ["# Credit strategy comparison", "",
             f"Base recipe `{r['config']['compare_base_recipe']}`, budget `{r['config']['compare_budget'] or '-'}`, "
             f"seeds {seeds}, baseline **{r['baseline']}**; held-out evaluation `{r['config']['compare_eval_recipe']}` "
             f"`{r['config']['compare_eval_overrides'] or ''}`.", "",
             "Accuracy: per seed, the mean over held-out problems; across seeds, the mean and a 95 % interval from a "
             "two-stage bootstrap (seeds, then problems; 10,000 resamples). Paired Δ: the same seeds (same data order) "
             "and the same problems, strategy minus baseline, in points; seeds ↑/↓/=: seeds where the strategy's "
             "accuracy is above / below / equal to the baseline's.", ""]
    for grading, per_ds in r["accuracy"].items():
        for dataset, acc in per_ds.items():
            lines += [f"## {dataset}, {grading} grading", "",
                      "| strategy | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | 95 % CI | paired Δ vs baseline | 95 % CI | seeds ↑/↓/= |",
                      "|---|" + "---:|" * (len(seeds) + 5)]
            start = acc["start"]
            lines.append("| start (before training) | " + " | ".join("" for _ in seeds) + f" | {_pct(start['mean'])} | | | | |")
            for label, a in acc.items():
                if label == "start":
                    continue
                cells = " | ".join(_pct(a["per_seed"].get(str(s))) for s in seeds)
                p = r["paired"][grading][dataset].get(label)
                pair = (f"{100 * p['delta']:+.1f} | [{100 * p['ci'][0]:+.1f}, {100 * p['ci'][1]:+.1f}] | "
                        f"{p['seeds_up']}/{p['seeds_down']}/{p['seeds_equal']}") if p else "(baseline) | | "
                lines.append(f"| {label} | {cells} | {_pct(a['mean'])} | [{_pct(a['ci'][0])}, {_pct(a['ci'][1])}] | {pair} |")
            lines.append("")
    lines += ["## Cost per run", "", "| run | wall (s) | s/step | credit time (share of step) | extra forward (share of batches) |",
              "|---|---:|---:|---:|---:|"]
    for key, c in r["cost"].items():
        st = f"{c['step_time_s']:.1f}" if c["step_time_s"] else "–"
        lines.append(f"| {key} | {c['wall_s']:.0f} | {st} | {_pct(c['credit_time_frac'])} % | {_pct(c['extra_forward_frac'])} % |")
    if r.get("signal"):
        lines += ["", "## Does the signal move? (starting model vs trained adapter, same completions)", "",
                  "| run | completions | FAI correlation (Pearson) | anchor Jaccard | preplan Jaccard | mean abs ΔWAAD |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key, s in r["signal"].items():
            lines.append(f"| {key} | {s['completions']} | {s['fai_corr']:.3f} | {s['anchor_jaccard']:.3f} | "
                         f"{s['preplan_jaccard']:.3f} | {s['waad_abs_diff']:.4f} |")
    lines += ["", "Learning curves: `plots/reward.png` (mean over seeds, band min-max)."]
    return "\n".join(lines) + "\n"


def _plots(r: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in r["strategies"]:
        curves = [c["reward"] for k, c in r["curves"].items() if k.split("/seed")[0] == label and c["reward"]]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        vals = [[c[s] for c in curves] for s in steps]
        mean = [sum(v) / len(v) for v in vals]
        ax.plot(steps, mean, label=label)
        ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("reward (mean over seeds; band: min-max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "reward.png", dpi=110)
    plt.close(fig)
