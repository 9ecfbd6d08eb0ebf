"""Inspect attention credit on a trace: which response tokens get extra credit, and why.

    python scripts/inspect_credit.py --prompt "What is 17 * 23?"                     # embedded model
    python scripts/inspect_credit.py --dataset gsm8k_test --index 3 --strategy coupled --strategy local_chunk
    python scripts/inspect_credit.py --records out/rollouts.jsonl --record-index 0 --record-index 5
    python scripts/inspect_credit.py settings.yaml --records out/rollouts.jsonl --credit_quantile 0.3

Writes <out>/inspector.html (self-contained: open it in any browser, offline) and PNG plots of WAAD
and FAI along each response and of head spans per layer. The credit_* and attn_* options are the
training config's (rlattn.config.AttnCreditConfig); the library side is ``rlattn.inspector``
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

from rlattn.inspector.cli import parse_inspect_args, run_inspect, written_lines  # noqa: E402


def main() -> None:
    # ---- parse: [recipe.yaml] + options; bad arguments exit 2 naming the key ----
    args, config = parse_inspect_args()

    # ---- run: traces from prompts, dataset rows or rollout records, then the page and the plots ----
    written = run_inspect(args, config)

    # ---- where it wrote ----
    print("\n".join(written_lines(written)))


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:  # bad input: a one-line message, not a traceback
        sys.exit(f"scripts/inspect_credit.py: error: {err}")
