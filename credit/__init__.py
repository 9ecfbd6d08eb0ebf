"""rlattn.credit: attention statistics (WAAD, FAI, head spans) and credit strategies.

Public API (docs/credit.md):

    from rlattn.credit import AttentionStatsConfig, AttentionStats, compute_attention_stats
    stats = compute_attention_stats(model, input_ids, attention_mask, response_mask, config=AttentionStatsConfig())

    from rlattn.credit import CreditConfig, get_credit_fn, register_credit, CREDIT_REGISTRY
    gamma = get_credit_fn("coupled")(waad=..., fai=..., mask=..., entropies=None, config=CreditConfig())

    from rlattn.credit import apply_credit        # Ã = γ·A with the sign option -> [B, T]
    from rlattn.credit import select_tokens, credit_report

Modules: ``attention_stats`` (the streaming engine) and ``capture`` (q/k interception);
``selection`` (Δ, TopQ, dominated anchors, intro tokens); one file per strategy (``uniform``,
``local_chunk``, ``global_anchor``, ``coupled``, ``random_tokens``, ``high_entropy``), registered
by ``registry``; ``advantages``; ``report``.

Glossary of shapes: B batch, N prompt ⊕ response length, T response (completion) length,
L model layers, nL selected layers, H query heads, KV key/value heads, D head dim.
"""

from .advantages import apply_credit
from .attention_stats import AttentionStats, AttentionStatsConfig, compute_attention_stats, default_layers
from .config import CreditConfig
from .registry import CREDIT_REGISTRY, credit_needs, get_credit_fn, register_credit, strategy_needs
from .report import CreditReport, credit_report
from .selection import select_tokens, top_q, waad_deltas

__all__ = [
    "AttentionStats",
    "AttentionStatsConfig",
    "compute_attention_stats",
    "default_layers",
    "CREDIT_REGISTRY",
    "CreditConfig",
    "get_credit_fn",
    "register_credit",
    "credit_needs",
    "strategy_needs",
    "apply_credit",
    "CreditReport",
    "credit_report",
    "select_tokens",
    "top_q",
    "waad_deltas",
]

# The built-in strategies, one file each: importing them registers them (listed here, not found by
# a scan, so the wiring is visible). Add new strategy files to this line.
from . import coupled, global_anchor, high_entropy, local_chunk, random_tokens, uniform  # noqa: E402,F401
