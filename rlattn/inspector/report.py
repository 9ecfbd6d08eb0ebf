"""A report folder: the page and the PNG plots of some traces, written in one call.

:func:`write_report` is what ``scripts/inspect_credit.py`` ends with: per trace a WAAD/FAI plot and
(model traces only; records store no head spans) a head-span plot, then ``inspector.html`` with the
plots embedded, so the page alone is the whole report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .page import write_html
from .plots import plot_head_spans, plot_signals
from .trace import Trace


def write_report(
    traces: Sequence[Trace],
    out_dir,
    *,
    strategies: Sequence[str] | None = None,
    signal: str = "gamma",
    plots: bool = True,
    embed_plots: bool = True,
    title: str = "rlattn inspector",
) -> dict[str, Any]:
    """Write ``inspector.html`` and, with ``plots``, ``trace<i>_signals.png`` / ``trace<i>_heads.png`` per trace
    (i = trace number; no head plot for record traces) into ``out_dir``. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, Path] = {}
    if plots:
        for i, tr in enumerate(traces):
            pngs[f"{tr.label}: WAAD / FAI"] = plot_signals(tr, out / f"trace{i}_signals.png")
            if tr.head_span is not None:
                pngs[f"{tr.label}: head spans"] = plot_head_spans(tr, out / f"trace{i}_heads.png")
    page = write_html(out / "inspector.html", traces, strategies=strategies, signal=signal, title=title,
                      images=pngs if embed_plots else None)
    return {"html": page, "pngs": list(pngs.values())}

