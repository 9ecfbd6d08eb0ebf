"""The inspector page: one self-contained HTML file for one or more traces.

The page template, its CSS and its script are package data (``assets/page.html``,
``assets/inspector.css``, ``assets/inspector.js``), read with ``importlib.resources`` so they can be
linted and viewed on their own. :func:`render_html` fills the template's ``$placeholders``
(``string.Template``) with the escaped header, the controls' options, the plots as data URIs and
the traces as embedded JSON, and inlines the CSS and JS: the page loads nothing from the network
and opens offline in any browser. It shows one panel per (trace, strategy), side by side.

The data is columnar, values keep 4 significant digits and flags are index lists, so an 8K-token
trace with two strategies and its embedded WAAD/FAI plot stays under 2 MB (the tests hold it to
that bound); the script builds the token spans in batches of ``RENDER_BATCH``, yielding to the
browser in between, so a long trace never blocks the page.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Sequence

from .trace import FLAG_KEYS, SIGNALS, Trace

RENDER_BATCH = 400  # tokens built per batch in the page, between yields to the browser
SIGNAL_LABELS = {"gamma": "γ (credit weight)", "waad": "WAAD", "delta": "Δ WAAD (preplan score)", "fai": "FAI (anchor score)"}
ASSETS = ("page.html", "inspector.css", "inspector.js")


@functools.cache
def asset(name: str) -> str:
    """The text of a file in ``rlattn/inspector/assets/`` (package data)."""
    if name not in ASSETS:
        raise ValueError(f"no inspector asset {name!r}; the assets are {', '.join(ASSETS)}")
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _num(x: float | None):
    """4 significant digits; None for NaN/inf (JSON has no NaN); ints stay ints."""
    if x is None or not math.isfinite(x):
        return None
    r = float(f"{x:.4g}")
    return int(r) if r.is_integer() and abs(r) < 1e15 else r


def _trace_payload(tr: Trace) -> dict[str, Any]:
    return {
        "label": tr.label,
        "tokens": tr.tokens,
        "ids": tr.token_ids,
        "waad": [_num(v) for v in tr.waad],
        "delta": [_num(v) for v in tr.delta],
        "fai": [_num(v) for v in tr.fai],
        "gammas": {k: [_num(v) for v in g] for k, g in tr.gammas.items()},
        "flags": {k: [i for i, f in enumerate(tr.flags[k]) if f] for k in FLAG_KEYS},
        "links": [list(l) for l in tr.links],
    }


def _json_for_script(obj: Any) -> str:
    # '<' only occurs inside JSON strings; escaping it keeps "</script>" and "<!--" inert.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _fmt_config(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    return " · ".join(f"{k}={v}" for k, v in d.items() if v is not None)


def _header(traces: list[Trace], strategies: list[str], title: str) -> str:
    """The page title, the model / strategy / config table and one prompt summary per trace (escaped)."""
    esc = html.escape
    models = list(dict.fromkeys(str(t.meta.get("model", "?")) for t in traces))
    head = [
        f"<h1>{esc(title)}</h1>",
        '<table class="meta">',
        f"<tr><th>model</th><td>{esc(', '.join(models))}</td></tr>",
        f"<tr><th>strategy</th><td>{esc(', '.join(strategies))}</td></tr>",
        f"<tr><th>credit config</th><td>{esc(_fmt_config(traces[0].credit_config))}</td></tr>",
    ]
    if traces[0].stats_config:
        sc = {k: v for k, v in traces[0].stats_config.items() if k not in ("fixed_local_heads", "fixed_global_heads", "chunk_size", "memory_budget_mb")}
        head.append(f"<tr><th>attention stats</th><td>{esc(_fmt_config(sc))}</td></tr>")
    head.append("</table>")
    for tr in traces:
        extra = {k: v for k, v in tr.meta.items() if k != "model"}
        summary = f"{esc(tr.label)} — {len(tr)} response tokens" + (f" · {esc(_fmt_config(extra))}" if extra else "")
        head.append(f'<details class="prompt"><summary>{summary}</summary><pre>{esc(tr.prompt)}</pre></details>')
    return "\n".join(head)


def _plots(images: dict[str, Any] | None) -> str:
    """The PNGs (bytes or paths) as data-URI figures in a <details> block; "" without images."""
    if not images:
        return ""
    figures = []
    for caption, img in images.items():
        raw = img if isinstance(img, (bytes, bytearray)) else Path(img).read_bytes()
        b64 = base64.b64encode(raw).decode("ascii")
        figures.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return '<details class="plots" open><summary>plots</summary>' + "".join(figures) + "</details>"


def render_html(
    traces: Trace | Sequence[Trace],
    *,
    strategies: Sequence[str] | None = None,
    signal: str = "gamma",
    title: str = "rlattn inspector",
    images: dict[str, Any] | None = None,
) -> str:
    """One self-contained HTML page (inline CSS/JS, no network) for the traces.

    One panel per (trace, strategy), side by side. ``strategies`` defaults to each trace's own;
    ``signal`` is the initial colouring (one of ``SIGNALS``; the page has a selector). ``images``
    maps a caption to PNG bytes or a PNG path, embedded as data URIs under the panels.
    """
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    if not traces:
        raise ValueError("render_html: no traces given")
    if signal not in SIGNALS:
        raise ValueError(f"signal={signal!r} is invalid; allowed: {', '.join(SIGNALS)}")
    panels = []
    for ti, tr in enumerate(traces):
        for s in list(strategies) if strategies else tr.strategies:
            if s not in tr.gammas:
                raise ValueError(f"strategy {s!r} is not computed for trace {tr.label!r}; it has: {', '.join(tr.gammas)}")
            panels.append({"trace": ti, "strategy": s})
    data = {"signal": signal, "batch": RENDER_BATCH, "traces": [_trace_payload(t) for t in traces], "panels": panels}
    options = "".join(f'<option value="{s}"{" selected" if s == signal else ""}>{SIGNAL_LABELS[s]}</option>' for s in SIGNALS)
    return Template(asset("page.html")).substitute(
        title=html.escape(title),
        css=asset("inspector.css"),
        columns=min(len(panels), 3),
        header=_header(traces, list(dict.fromkeys(p["strategy"] for p in panels)), title),
        options=options,
        plots=_plots(images),
        data=_json_for_script(data),
        js=asset("inspector.js"),
    )


def write_html(path, traces, **kwargs) -> Path:
    """:func:`render_html` into ``path`` (UTF-8). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(traces, **kwargs), encoding="utf-8")
    return path
