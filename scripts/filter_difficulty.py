"""Keep the problems a model solves sometimes: sample k completions per problem, keep a pass-rate band.

    python scripts/filter_difficulty.py --dataset_name gsm8k_train --dataset_limit 500 --k 8 --band 0.1 0.9 \
        --output outputs/gsm8k_filtered.jsonl
    python scripts/grpo.py recipes/anchor_credit.yaml --dataset_name outputs/gsm8k_filtered.jsonl

Writes the kept problems as JSONL (with their measured pass_rate) and <output>.summary.json with
the pass-rate histogram of all of them. Options: rlattn.analysis.difficulty.DifficultyConfig.
"""

import json
import logging
import os
import sys

# Python puts this script's folder first on sys.path; scripts never import each other.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]

from rlattn.analysis.difficulty import filter_difficulty, parse_difficulty_args


def main():
    # ---- parse: optional YAML + command-line flags; unknown keys fail naming the key ----
    config = parse_difficulty_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    # ---- sample k completions per problem, grade, keep the band, write ----
    summary = filter_difficulty(config)

    # ---- what was kept ----
    print(f"rlattn: kept {summary['kept']} of {summary['problems']} problems (mean pass rate "
          f"{summary['mean_pass_rate']:.3f}) -> {summary['output']}")
    print("rlattn: pass-rate histogram (solved c of k):", json.dumps(summary["histogram"]))


if __name__ == "__main__":
    sys.exit(main())
