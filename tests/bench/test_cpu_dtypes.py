"""bench/cpu_dtypes.py runs at a tiny size and prints one row per dtype, with the rule's answer."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_cpu_dtypes_prints_a_row_per_dtype():
    out = subprocess.run([sys.executable, str(BENCH / "cpu_dtypes.py"), "--size", "64", "--repeats", "1"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "GFLOPS" not in line}
    assert set(rows) == {"float32", "bfloat16", "float16"}, out
    assert "| 1.000x |" in rows["float32"] and "| yes | float32 |" in rows["float32"]
    for half in ("bfloat16", "float16"):  # native: trains in it; not native: float32
        assert rows[half].rstrip().endswith(("| yes | " + half + " |", "| no | float32 |")), rows[half]
