"""rlattn.analysis: measurements of a model's attention rhythm (not training code).

    from rlattn.analysis import RhythmConfig, analyze_rhythm
    report = analyze_rhythm(RhythmConfig(model="embedded:smollm2-135m-instruct", dataset="gsm8k_test", limit=70))
    report.summary["couplings"]["fai_follows_waad"]["lift"]

or ``python scripts/analyze_rhythm.py [recipe.yaml] [--key value ...]``. ``rhythm`` reproduces the
Section 4 analysis of arXiv 2510.13554 (Tables 1 and 2) on any model: the couplings between WAAD
peaks, FAI peaks, receiver heads and token entropy that the credit strategies rest on, each
against its random baseline with bootstrap intervals over problems (``docs/rhythm.md``).
"""

from .rhythm import (
    PAPER_TABLES,
    Coupling,
    RhythmConfig,
    RhythmReport,
    ResponseSignals,
    analyze_rhythm,
    content_words,
    entropy_at_peaks,
    excess_kurtosis,
    fai_follows_waad,
    find_peaks,
    jaccard,
    measure_response,
    parse_rhythm_args,
    peak_eligible,
    receiver_global_cooccurrence,
    select_receiver_heads,
    summarize_coupling,
)

__all__ = [
    "PAPER_TABLES",
    "Coupling",
    "RhythmConfig",
    "RhythmReport",
    "ResponseSignals",
    "analyze_rhythm",
    "content_words",
    "entropy_at_peaks",
    "excess_kurtosis",
    "fai_follows_waad",
    "find_peaks",
    "jaccard",
    "measure_response",
    "parse_rhythm_args",
    "peak_eligible",
    "receiver_global_cooccurrence",
    "select_receiver_heads",
    "summarize_coupling",
]
