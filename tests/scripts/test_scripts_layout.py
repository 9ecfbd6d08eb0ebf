"""No script may shadow a standard-library module: Python puts scripts/ first on sys.path."""

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_no_script_named_like_a_stdlib_module():
    clashes = [p.name for p in SCRIPTS.glob("*.py") if p.stem in sys.stdlib_module_names]
    assert clashes == [], f"rename {clashes}: they would shadow the standard library for every script in scripts/"
