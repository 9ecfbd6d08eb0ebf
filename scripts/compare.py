"""Which credit strategy helps on my task? Train a grid of strategies x seeds, evaluate every run on
a held-out set, report paired differences against the baseline with intervals.

    python scripts/compare.py recipes/compare/credit_grid.yaml [--key value ...]

Writes <output_dir>/report.md, report.json, plots/reward.png; runs under <output_dir>/runs and the
evaluation under <output_dir>/eval. A finished run is reused when the grid is run again.
Options: rlattn.compare.CompareConfig.
"""

import logging
import os
import sys

# Python puts this script's folder first on sys.path; scripts never import each other.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]

from rlattn.backbones import BackboneArguments
from rlattn.compare import parse_compare_args, run_comparison


def main():
    # ---- parse: the comparison recipe + command-line overrides; a bad grid fails here ----
    config = parse_compare_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    # ---- check the grid, train every (strategy, seed), evaluate all runs, report ----
    run_comparison(config, extra=(BackboneArguments,))  # recipes may carry the backbone plug-in's keys


if __name__ == "__main__":
    sys.exit(main())
