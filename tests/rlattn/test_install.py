"""Both install modes import all four packages and carry the bundled data and the inspector's assets.

The editable install is what the test run itself uses. For the wheel, we build it from the repo,
unpack it with ``pip install --target`` into a temporary dir, and import from there in a fresh
interpreter whose working dir is outside the repo (so only the wheel's files can be found first).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import sys, rlattn, rlattn.credit, rlattn.rewards, rlattn.rollouts, rlattn.data, rlattn.inspector
from rlattn.data import load_dataset
prefix = sys.argv[1]
for mod in (rlattn, rlattn.credit, rlattn.rewards, rlattn.rollouts, rlattn.data, rlattn.inspector):
    assert mod.__file__.startswith(prefix), (mod.__name__, mod.__file__, prefix)
assert len(load_dataset("aime24")) == 30
from rlattn.inspector.page import ASSETS, asset
assert all(asset(name) for name in ASSETS)
from rlattn.credit import compute_attention_stats, get_credit_fn
print("ok")
"""


def test_editable_install_imports_all_packages():
    out = subprocess.run([sys.executable, "-c", CHECK, str(ROOT)], capture_output=True, text=True, cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_built_wheel_imports_all_packages_and_carries_data(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("rlattn-*.whl")
    target = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    assert sorted(p.name for p in (target / "rlattn" / "data" / "math").glob("*.jsonl.gz")) == sorted(
        p.name for p in (ROOT / "rlattn" / "data" / "math").glob("*.jsonl.gz")
    )
    assert (target / "rlattn" / "data" / "math" / "README.md").is_file()
    assert sorted(p.name for p in (target / "rlattn" / "inspector" / "assets").iterdir()) == sorted(
        p.name for p in (ROOT / "rlattn" / "inspector" / "assets").iterdir()
    )
    assert not (target / "credit").exists() and not (target / "rewards").exists(), "no generic top-level packages"
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", CHECK, str(target)], capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
