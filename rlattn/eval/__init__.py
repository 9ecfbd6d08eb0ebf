"""rlattn.eval: score models on math reasoning sets and write a report people want to read.

    from rlattn.eval import EvalConfig, evaluate
    report = evaluate(EvalConfig(models=["embedded:smollm2-135m-instruct", "outputs/anchor_credit"],
                                 datasets=["math500", "aime24"], n=4, limit=50, output_dir="outputs/eval/cmp"))
    report.metric("anchor_credit", "math500", "pass@1")

or from the shell (same fields, YAML + command line, as the training scripts):

    python scripts/evaluate.py recipes/eval/quick_cpu.yaml --model A --model B

Per dataset and model: avg@n, unbiased pass@k, maj@k, format rate, mean response length,
truncation rate, ungraded count (``metrics.py``), strict and/or lenient (``grading``). Every model
after the first gets its paired difference against the first on the same problems, with a 95 %
bootstrap interval, wins/losses/ties and a sign-test p-value (``stats.py``, reusable for other
comparisons). Grading is the training reward's bounded grader (``grade.py``). Outputs in ``output_dir``: ``report.md``, ``report.json``,
``samples.jsonl`` (one graded sample a line; a rerun resumes from it) and ``plots/*.png``
(``report.py``). Modules: ``config`` (EvalConfig), ``loading`` (checkpoints, hub ids,
``embedded:``, LoRA adapters), ``generate`` (batched HF generate, or the vLLM engine of
``rlattn.rollouts`` with ``backend: vllm``), ``grade``, ``metrics``, ``stats``,
``report``, ``runner`` (``evaluate``). The protocol and metric definitions: docs/evaluation.md.
"""

from .config import BACKENDS, GRADINGS, PAPER_TABLES, EvalConfig, default_k_values, parse_eval_args
from .generate import Generation, check_backend, generate_batch
from .grade import SampleGrade, grade_completions, grade_samples
from .loading import LoadedModel, ModelLoadError, load_eval_model, locate_model, model_label
from .metrics import ProblemSamples, dataset_metrics, maj_at_k, normalise_answer, pass_at_k
from .report import render_markdown, write_plots, write_report
from .runner import EvalReport, SampleStore, evaluate
from .stats import paired_bootstrap, paired_bootstrap_grouped, paired_difference, sign_test

__all__ = [
    "BACKENDS",
    "GRADINGS",
    "PAPER_TABLES",
    "EvalConfig",
    "EvalReport",
    "Generation",
    "LoadedModel",
    "ModelLoadError",
    "ProblemSamples",
    "SampleGrade",
    "SampleStore",
    "check_backend",
    "dataset_metrics",
    "default_k_values",
    "evaluate",
    "generate_batch",
    "grade_completions",
    "grade_samples",
    "load_eval_model",
    "locate_model",
    "maj_at_k",
    "model_label",
    "normalise_answer",
    "paired_bootstrap",
    "paired_bootstrap_grouped",
    "paired_difference",
    "parse_eval_args",
    "pass_at_k",
    "render_markdown",
    "sign_test",
    "write_plots",
    "write_report",
]
