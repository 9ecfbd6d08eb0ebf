"""rlattn.compare: which credit helps? A strategy × seed grid through the real trainer, evaluated
on a held-out set, with paired statistics (``scripts/compare.py recipes/compare/<name>.yaml``).

    from rlattn.compare import CompareConfig, run_comparison
"""

from .config import CompareConfig, Variant, parse_compare_args
from .runner import GridRun, check_grid, run_comparison

__all__ = ["CompareConfig", "GridRun", "Variant", "check_grid", "parse_compare_args", "run_comparison"]
