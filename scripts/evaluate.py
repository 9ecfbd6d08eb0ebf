"""Evaluate one or more models/checkpoints on math sets and write a report.

    python scripts/evaluate.py recipes/eval/quick_cpu.yaml [--model A --model B ...] [--key value ...]
    python scripts/evaluate.py --config recipes/eval/paper_protocol.yaml --model outputs/Qwen3-4B-Base-coupled-1024

Writes output_dir/report.md, report.json, samples.jsonl and plots/*.png (see docs/evaluation.md).
"""

import logging
import os
import sys

# Python puts this script's folder first on sys.path; a sibling script named like a standard module
# (e.g. an inspect.py) would then shadow it for every import below. Scripts never import each other.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]

from rlattn.eval import evaluate, parse_eval_args


def main():
    # ---- parse: recipe YAML + command-line overrides; unknown keys fail naming the key ----
    config = parse_eval_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    # ---- evaluate: load data and models, sample (resuming from samples.jsonl), grade, report ----
    report = evaluate(config)

    # ---- where things went ----
    print(f"rlattn: report in {report.files['report_md']} (json: {report.files['report_json']}, samples: {report.files['samples']})")
    if report.ungraded:
        print(f"rlattn: {len(report.ungraded)} sample(s) could not be graded; listed in the report")


if __name__ == "__main__":
    sys.exit(main())
