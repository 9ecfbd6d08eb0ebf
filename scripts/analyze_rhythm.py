"""Does my model have the rhythm? The Section 4 analysis of arXiv 2510.13554 on any model.

    python scripts/analyze_rhythm.py [recipe.yaml] [--key value ...]
    python scripts/analyze_rhythm.py --model embedded:smollm2-135m-instruct --dataset gsm8k_test --limit 70
    python scripts/analyze_rhythm.py --records outputs/anchor_credit/rollouts.jsonl --model outputs/anchor_credit
    python scripts/analyze_rhythm.py --perturb true        # also the perturbation test (Table 1), slower

Writes output_dir/report.md, report.json, responses.jsonl (the signals per token, readable by
scripts/inspect_credit.py --records) and plots/*.png. Fields: rlattn.analysis.RhythmConfig;
definitions and the [ours] choices: docs/rhythm.md.
"""

import logging
import os
import sys

# Python puts this script's folder first on sys.path; scripts never import each other.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]

from rlattn.analysis import analyze_rhythm, parse_rhythm_args


def main():
    # ---- parse: recipe YAML + command-line overrides; unknown keys fail naming the key ----
    config = parse_rhythm_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    # ---- analyse: model, responses (generated or from records), signals, couplings, report ----
    report = analyze_rhythm(config)

    # ---- where things went ----
    print(report.headline())


if __name__ == "__main__":
    sys.exit(main())
