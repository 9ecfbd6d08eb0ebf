"""``evaluate(config) -> EvalReport``: sample, grade, store, resume, aggregate, report.

Why it is built around one per-sample file: evaluation on a CPU (or 16 samples of 8K tokens on
AIME on a GPU) takes long enough to be interrupted. Every graded sample is appended to
``output_dir/samples.jsonl`` (flushed per batch) under the key ``(model, dataset, problem_id,
sample_index)``; a rerun reads the file, reuses every sample it holds, and generates only the
missing ones. A line cut short by a kill is skipped. Each record carries the fingerprint of the
sampling/grading settings (:meth:`EvalConfig.sample_fingerprint`); samples drawn under other
settings are refused with an error rather than mixed in (``resume: false`` starts over).

A record holds the sample's text and, per grading the run reports (``grades``), the graded
answer and verdict; ``answer`` / ``correct`` repeat the headline grading's, and ``boxed`` says
whether it has a non-empty box. Records written before ``boxed`` / ``grades`` existed are
upgraded on load (:func:`_upgrade_legacy_records`): ``boxed`` is ``answer is not None`` (they
stored the box content), and under lenient grading the unboxed ones are graded again by the
current rule, so that their stored answer is the graded one.

The report adds, for every model after the first, its **paired difference** against the first
on each dataset and grading (:mod:`rlattn.eval.stats`: per-problem c/n differences, bootstrap
interval over problems, wins/losses/ties, sign test).

Order of work: datasets are loaded and model specs located first, so an unknown dataset or a
missing checkpoint fails before any generation; then, per model, only models with missing
samples are loaded (a fully cached model is not even loaded); per dataset, the missing samples
are generated in batches of ``batch_size`` and graded at once, with a progress bar. With
``backend: vllm`` a model is a vLLM engine process (:func:`~rlattn.eval.generate.load_vllm_model`)
instead of an HF model, stopped once the model's samples are done (or the run fails).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import EvalConfig
from .generate import check_backend, generate_batch, load_vllm_model, seed_from
from .grade import grade_completions, grade_samples
from .loading import load_eval_model, locate_model, model_label
from .metrics import ProblemSamples, dataset_metrics
from .stats import paired_difference

__all__ = ["EvalReport", "SampleStore", "evaluate"]

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"


@dataclass
class EvalReport:
    """What :func:`evaluate` measured; ``results[model_label][dataset]`` is a metrics dict
    (:func:`rlattn.eval.metrics.dataset_metrics`: rates as fractions, lengths in tokens) under the
    headline grading, ``results_by_grading[grading]`` the same for every reported grading."""

    protocol: dict
    models: list[dict]  # label, spec, kind, path, base; the first is the baseline of every delta
    datasets: list[dict]  # name, problems, n, k
    results: dict[str, dict[str, dict]]
    ungraded: list[dict]  # model, dataset, problem_id, sample_index, answer, gradings (where it is ungraded)
    config: dict
    output_dir: str
    files: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # reused / generated samples this run
    gradings: list[str] = field(default_factory=lambda: ["strict"])  # the headline first
    results_by_grading: dict[str, dict[str, dict[str, dict]]] = field(default_factory=dict)
    # paired differences vs the first model: method settings + rows (grading, dataset, model,
    # problems, delta, ci_low, ci_high as fractions; wins, losses, ties; p_value)
    paired: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [m["label"] for m in self.models]

    def metric(self, model: str, dataset: str, key: str, grading: str | None = None):
        """One number, e.g. ``report.metric("base", "math500", "pass@1")`` (headline grading unless named)."""
        if grading is None:
            return self.results[model][dataset][key]
        return self.results_by_grading[grading][model][dataset][key]

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "models": self.models,
            "datasets": self.datasets,
            "gradings": self.gradings,
            "results": self.results,
            "results_by_grading": self.results_by_grading,
            "paired": self.paired,
            "ungraded": self.ungraded,
            "counts": self.counts,
            "config": self.config,
            "files": self.files,
        }


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def weights_id(spec: str) -> str | None:
    """For a model given as a local directory: a digest of its weight files' names, sizes and mtimes
    (None otherwise). A run trained again into the same output dir gets another id, so its old
    samples are never reused for the new weights."""
    path = Path(spec)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    digest = hashlib.sha1()
    for f in files:
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


class SampleStore:
    """The per-sample JSONL: load what a previous run graded, append new records as they come.
    A sample belongs to a model spec and, for a local directory, to its weight files (``weights``)."""

    def __init__(self, path: Path, fingerprint: str, resume: bool = True):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.records: dict[tuple, dict] = {}
        self.skipped_lines = 0
        self._weights: dict[str, str | None] = {}
        if not resume or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
            return
        with self.path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = self.key(rec["model"], rec["dataset"], rec["problem_id"], rec["sample_index"], rec.get("weights"))
                except (ValueError, KeyError, TypeError):
                    self.skipped_lines += 1  # a line cut short by a kill: regenerate that sample
                    continue
                if rec.get("fingerprint") != fingerprint:
                    raise ValueError(
                        f"{self.path}, line {lineno}: this sample was drawn with other settings (fingerprint "
                        f"{rec.get('fingerprint')!r}, now {fingerprint!r}: temperature, top_p, max_new_tokens, "
                        "prompt_template, seed, backend or grading changed); use another output_dir, or resume: false "
                        "(--resume false) to start over"
                    )
                self.records[key] = rec
        if self.skipped_lines:
            logger.warning("%s: %d unreadable line(s) (an interrupted write?) skipped; those samples are regenerated", self.path, self.skipped_lines)
        self._rewrite()  # drop partial lines so appends start on a clean line

    @staticmethod
    def key(model: str, dataset: str, problem_id, sample_index, weights: str | None = None) -> tuple:
        return (str(model), weights, str(dataset), str(problem_id), int(sample_index))

    def weights_of(self, model: str) -> str | None:
        if model not in self._weights:
            self._weights[model] = weights_id(model)
        return self._weights[model]

    def get(self, model: str, dataset: str, problem_id, sample_index) -> dict | None:
        return self.records.get(self.key(model, dataset, problem_id, sample_index, self.weights_of(model)))

    def append(self, records: list[dict]) -> None:
        for rec in records:
            rec["weights"] = self.weights_of(rec["model"])
        with self.path.open("a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for rec in records:
            self.records[self.key(rec["model"], rec["dataset"], rec["problem_id"], rec["sample_index"], rec["weights"])] = rec

    def rewrite(self) -> None:
        """Write the file again from the records held (after an upgrade of old records)."""
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in self.records.values():
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _effective_dtype(config: EvalConfig, device: str) -> str:
    """``config.dtype``, or float32 where ``cpu_precision: auto`` finds no native kernels for it on this CPU
    (``rlattn.utils.cpu_has_native``: bf16 matmuls ~100x slower than float32 there)."""
    from rlattn.utils import fast_cpu_dtype

    return fast_cpu_dtype(config.dtype, config.cpu_precision, device == "cpu", doing="evaluating")


def _labels(config: EvalConfig) -> list[str]:
    if config.model_labels is not None:
        return list(config.model_labels)
    labels, seen = [], {}
    for spec in config.models:
        base = model_label(spec)
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return labels


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled or total == 0, leave=True, dynamic_ncols=True)


def evaluate(
    config: EvalConfig,
    *,
    grader=None,
    on_batch: Callable[[list[dict]], None] | None = None,
    write: bool = True,
) -> EvalReport:
    """Evaluate every model on every dataset; write report.md/.json, samples.jsonl and plots.

    Args:
        config: what to run (:class:`EvalConfig`).
        grader: a :class:`rlattn.rewards.BoundedGrader` to grade with (default: a new one with
            ``grade_workers`` workers, closed at the end).
        on_batch: called with the records of each batch after they are stored (progress hooks;
            an exception raised here stops the run, and what was stored is reused on resume).
        write: write report.md / report.json / plots (samples.jsonl is always written).
    """
    from rlattn.data import load_dataset
    from rlattn.rewards import BoundedGrader

    if not isinstance(config, EvalConfig):
        raise TypeError(f"evaluate() takes an EvalConfig, got {type(config).__name__}")
    check_backend(config.backend)

    # ---- fail fast: every dataset loads and every model spec points at something ----
    n_per = config.n_per_dataset()
    data = {}
    for name in config.datasets:
        try:
            data[name] = load_dataset(name, template=config.prompt_template, limit=config.limit)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"datasets entry {name!r}: {err}") from err
    labels = _labels(config)
    model_infos = []
    for spec, label in zip(config.models, labels):
        kind, path, base = locate_model(spec)
        model_infos.append({"label": label, "spec": spec, "kind": kind, "path": path, "base": base})

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = config.sample_fingerprint()
    store = SampleStore(out / SAMPLES_FILE, fingerprint, resume=config.resume)
    own_grader = grader is None
    if own_grader:
        grader = BoundedGrader(num_workers=config.grade_workers, timeout=config.grade_timeout_s)
    gradings = config.gradings()
    counts = {"reused": 0, "generated": 0}
    device = _device(config.device)
    dtype = _effective_dtype(config, device)
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)

    try:
        _upgrade_legacy_records(store, gradings, grader, config.grade_timeout_s)
        for info in model_infos:
            spec, label = info["spec"], info["label"]
            todo: dict[str, list[tuple[dict, int]]] = {}
            for name, ds in data.items():
                missing = []
                for row in ds:
                    for s in range(n_per[name]):
                        if store.get(spec, name, row["id"], s) is None:
                            missing.append((row, s))
                        else:
                            counts["reused"] += 1
                todo[name] = missing
            if not any(todo.values()):
                logger.info("%s: every sample is already graded in %s; not loading the model", label, store.path)
                continue
            if config.backend == "vllm":
                # an engine process per model, sized for the prompts it will see; closed below
                loaded = load_vllm_model(
                    spec,
                    dtype=dtype,
                    prompts=[row["prompt"] for missing in todo.values() for row, _ in missing],
                    max_new_tokens=config.max_new_tokens,
                    seed=config.seed,
                    lora=config.vllm_lora,
                )
            else:
                loaded = load_eval_model(spec, dtype=dtype, device=device, attn_implementation=config.attn_implementation)
            info.update(loaded.info(), label=label)
            try:
                for name, missing in todo.items():
                    _run_dataset(config, store, grader, loaded, label, name, missing, fingerprint, on_batch, counts, gradings)
            finally:
                close = getattr(loaded, "close", None)
                if close is not None:
                    close()  # vllm: stop the engine process before the next model
                del loaded
                gc.collect()
    finally:
        if own_grader:
            grader.close()

    # ---- aggregate from the store (reused and new samples alike), per grading ----
    by_grading: dict[str, dict[str, dict[str, dict]]] = {g: {} for g in gradings}
    scores: dict[tuple, list[float]] = {}  # (grading, label, dataset) -> per-problem c/n, dataset order
    ungraded: list[dict] = []
    for info in model_infos:
        for name, ds in data.items():
            n = n_per[name]
            recs_by_problem = [[store.get(info["spec"], name, row["id"], s) for s in range(n)] for row in ds]
            for g in gradings:
                problems = [
                    ProblemSamples(
                        problem_id=str(row["id"]),
                        answers=[r["grades"][g]["answer"] for r in recs],
                        correct=[r["grades"][g]["correct"] for r in recs],
                        lengths=[r["length"] for r in recs],
                        truncated=[r["truncated"] for r in recs],
                        boxed=[r["boxed"] for r in recs],
                    )
                    for row, recs in zip(ds, recs_by_problem)
                ]
                by_grading[g].setdefault(info["label"], {})[name] = dataset_metrics(problems, n, config.k_for(name))
                scores[(g, info["label"], name)] = [p.num_correct / n for p in problems]  # [problems]
            for recs in recs_by_problem:
                for r in recs:
                    where = [g for g in gradings if r["grades"][g]["correct"] is None]
                    if where:
                        entry = {k: r[k] for k in ("model", "model_label", "dataset", "problem_id", "sample_index", "answer")}
                        ungraded.append({**entry, "gradings": where})
    paired = _paired_differences(config, gradings, [m["label"] for m in model_infos], list(data), scores)
    report = EvalReport(
        protocol=config.protocol(),
        models=model_infos,
        datasets=[{"name": name, "problems": len(ds), "n": n_per[name], "k": config.k_for(name)} for name, ds in data.items()],
        results=by_grading[gradings[0]],
        ungraded=ungraded,
        config=config.to_dict(),
        output_dir=str(out),
        files={"samples": str(store.path)},
        counts=counts,
        gradings=gradings,
        results_by_grading=by_grading,
        paired=paired,
    )
    if write:
        from .report import write_report

        write_report(report, plots=config.plots)
    return report


def _paired_differences(config, gradings, labels, datasets, scores) -> dict:
    """Every model after the first against the first, per grading and dataset (:func:`paired_difference`)."""
    rows = []
    for g in gradings:
        for name in datasets:
            base = scores[(g, labels[0], name)]
            for label in labels[1:]:
                stats = paired_difference(base, scores[(g, label, name)], resamples=config.bootstrap_resamples, seed=config.bootstrap_seed, level=0.95)
                rows.append({"grading": g, "dataset": name, "model": label, **stats})
    return {
        "baseline": labels[0],
        "metric": "avg@n per problem (c/n); delta = model - baseline, as a fraction",
        "interval": "95 % percentile bootstrap over problems",
        "level": 0.95,
        "resamples": config.bootstrap_resamples,
        "seed": config.bootstrap_seed,
        "p_value": "two-sided exact sign test on wins vs losses (McNemar's exact test for n = 1)",
        "rows": rows,
    }


def _upgrade_legacy_records(store: SampleStore, gradings: list[str], grader, timeout: float) -> None:
    """Give records from before ``boxed`` / ``grades`` existed the current fields (module docstring).

    Such a record matched the fingerprint, so its run had one grading, ``gradings[0]``. It stored
    the box content as ``answer``, so ``boxed = answer is not None``. A lenient record without a
    box was graded by math-verify's own extraction of the raw text, and stored no answer: it is
    graded again by the current rule (the last number), so that it votes with what it scored.
    """
    legacy = [r for r in store.records.values() if "grades" not in r]
    if not legacy:
        return
    (grading,) = gradings  # a multi-grading fingerprint never matches a legacy record
    for r in legacy:
        r["boxed"] = r["answer"] is not None
    regrade = [r for r in legacy if grading == "lenient" and not r["boxed"]]
    if regrade:
        graded = grade_completions([r["completion"] for r in regrade], [r["gold"] for r in regrade], grader,
                                   timeout=timeout, fallback_last_number=True)
        for r, grade in zip(regrade, graded):
            r["answer"], r["correct"] = grade.answer, grade.correct
    for r in legacy:
        r["grades"] = {grading: {"answer": r["answer"], "correct": r["correct"]}}
    store.rewrite()
    logger.info("%s: %d record(s) from an older version upgraded (%d unboxed lenient ones graded again)", store.path, len(legacy), len(regrade))


def _run_dataset(config, store, grader, loaded, label, name, missing, fingerprint, on_batch, counts, gradings) -> None:
    """Generate and grade the missing samples of one (model, dataset), batch by batch."""
    if not missing:
        return
    bar = _progress(len(missing), f"{label} | {name}", config.progress)
    try:
        for start in range(0, len(missing), config.batch_size):
            batch = missing[start : start + config.batch_size]
            first_row, first_s = batch[0]
            gens = generate_batch(
                loaded.model,
                loaded.tokenizer,
                [row["prompt"] for row, _ in batch],
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=seed_from(config.seed, loaded.spec, name, first_row["id"], first_s),
            )
            graded = grade_samples(
                [g.text for g in gens],
                [row["solution"] for row, _ in batch],
                grader,
                gradings=gradings,
                timeout=config.grade_timeout_s,
            )  # {grading: [SampleGrade per sample]}
            records = []
            for i, ((row, s), gen) in enumerate(zip(batch, gens)):
                head = graded[gradings[0]][i]
                records.append({
                    "model": loaded.spec,
                    "model_label": label,
                    "dataset": name,
                    "problem_id": str(row["id"]),
                    "sample_index": s,
                    "completion": gen.text,
                    "answer": head.answer,  # the headline grading's graded answer
                    "boxed": head.boxed,
                    "gold": row["solution"],
                    "correct": head.correct,
                    "grades": {g: {"answer": graded[g][i].answer, "correct": graded[g][i].correct} for g in gradings},
                    "length": gen.length,
                    "truncated": gen.truncated,
                    "fingerprint": fingerprint,
                })
            store.append(records)
            counts["generated"] += len(records)
            bar.update(len(records))
            if on_batch is not None:
                on_batch(records)
    finally:
        bar.close()
