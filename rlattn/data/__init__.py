"""rlattn.data: the bundled math sets, Countdown, and ``load_dataset`` for TRL.

    from rlattn.data import load_dataset
    train = load_dataset("gsm8k", split="train")            # bundled, offline
    bench = load_dataset("math500", template="plain")       # plain-text prompts for base models
    cd = load_dataset("countdown", split="train")           # 20,000 generated puzzles (seed 0)
    ar = load_dataset("arith", split="test")                # 600 held-out graded word problems
    toy = load_dataset("synthetic_quadrant", limit=64)      # the toy image task (rlattn.data.synthetic)
    mine = load_dataset("problems.jsonl", answer_field="final")

See ``BUNDLED_DATASETS`` for the names and row counts, ``PROMPT_TEMPLATES`` for the templates,
``rlattn/data/math/README.md`` for where the math data came from.
"""

from .bundled import BUNDLED_DATASETS, BundledDataset
from .countdown import COUNTDOWN_SPLITS, generate_countdown, verify_countdown_equation
from .loader import is_seeded, known_dataset_names, load_dataset
from .templates import (
    PROMPT_TEMPLATES,
    R1_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    get_template,
    register_template,
)

__all__ = [
    "BUNDLED_DATASETS",
    "BundledDataset",
    "COUNTDOWN_SPLITS",
    "PROMPT_TEMPLATES",
    "R1_SYSTEM_PROMPT",
    "SYSTEM_PROMPT",
    "generate_countdown",
    "get_template",
    "is_seeded",
    "known_dataset_names",
    "load_dataset",
    "register_template",
    "verify_countdown_equation",
]
