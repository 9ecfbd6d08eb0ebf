"""Every script's ``--help`` prints: argparse %-formats each field's help text, so a literal "%"
("a 95 % interval") has to be escaped by ``rlattn.utils.field_help`` (it broke
``scripts/evaluate.py --help`` and, after a new "~40 % of" help, ``scripts/grpo.py --help`` too)."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from rlattn.utils import field_help

ROOT = Path(__file__).resolve().parents[2]


def test_field_help_survives_argparse_formatting():
    parser = argparse.ArgumentParser()
    parser.add_argument("--x", **field_help("a 95 % interval, ~40 % of it"))
    assert "a 95 % interval, ~40 % of it" in parser.format_help()


@pytest.mark.parametrize("script", ["grpo", "ppo", "evaluate", "compare", "filter_difficulty", "analyze_rhythm"])
def test_script_help_prints(script):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"], capture_output=True,
                          text=True, timeout=300, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
