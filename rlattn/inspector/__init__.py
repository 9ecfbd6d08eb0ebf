"""rlattn.inspector: see which response tokens get extra credit, and why.

The paper's insight is visual: WAAD's sawtooth marks phrasal chunks, FAI spikes mark anchor tokens,
and the preplan token sits just before its anchor. This package turns traces (a prompt and a
response) into the numbers behind that picture, one row per response token, and renders them
(docs/inspector.md). One module per concern:

- ``trace``: the :class:`Trace` data, :func:`inspect_table`, and traces from per-token signals
  (:func:`build_trace`), from a model on given ids (:func:`trace_from_model`) or from a greedy
  generation (:func:`generate_trace`); :func:`load_model` goes through rlattn's one model loader;
- ``text``: each token's text, decoded by the model's tokenizer (multi-byte characters kept whole);
- ``records``: traces from the trainer's rollout records (:func:`trace_from_record`,
  :func:`load_record_traces`), no model weights needed;
- ``plots``: WAAD/FAI and head-span PNGs (:func:`plot_signals`, :func:`plot_head_spans`);
- ``page``: the self-contained HTML page (:func:`render_html`, :func:`write_html`), from the
  template, CSS and JS in ``assets/`` (package data);
- ``report``: page and plots into a folder (:func:`write_report`);
- ``cli``: the command line of ``scripts/inspect_credit.py``, parsed with the training config.
"""

from .page import render_html, write_html
from .plots import plot_head_spans, plot_signals
from .records import load_record_traces, trace_from_record
from .report import write_report
from .trace import (
    FLAG_KEYS,
    SIGNALS,
    InspectTable,
    Trace,
    build_trace,
    generate_trace,
    inspect_table,
    load_model,
    trace_from_model,
)

__all__ = [
    "SIGNALS",
    "FLAG_KEYS",
    "Trace",
    "InspectTable",
    "build_trace",
    "trace_from_model",
    "generate_trace",
    "trace_from_record",
    "load_record_traces",
    "load_model",
    "inspect_table",
    "render_html",
    "write_html",
    "plot_signals",
    "plot_head_spans",
    "write_report",
]
