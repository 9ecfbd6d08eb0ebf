"""PNG plots of a trace with matplotlib (Agg backend, no display needed).

:func:`plot_signals` draws WAAD and FAI along the response with the selected tokens marked: the
paper's picture of the sawtooth (preplan at chunk boundaries) and the spikes (anchors).
:func:`plot_head_spans` draws the head span per layer × head with the local and global heads
outlined, i.e. which heads WAAD and FAI were read from. The page embeds both as data URIs.
"""

from __future__ import annotations

from pathlib import Path

from .trace import Trace


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_signals(trace: Trace, path) -> Path:
    """Two stacked line plots over response position: WAAD with preplan (▲) and intro (◆) tokens,
    FAI with anchors (●; hollow when dominated). Writes a PNG and returns its path."""
    plt = _pyplot()
    T = len(trace)
    x = list(range(T))
    width = min(24.0, max(8.0, T / 25))
    fig, (ax_w, ax_f) = plt.subplots(2, 1, figsize=(width, 5.2), sharex=True, constrained_layout=True)
    lw = 1.2 if T < 1000 else 0.6
    ax_w.plot(x, trace.waad, color="#1d4ed8", lw=lw, label="WAAD")
    ax_f.plot(x, trace.fai, color="#c2410c", lw=lw, label="FAI")
    fl = trace.flags
    pre = [t for t in x if fl["preplan"][t]]
    intro = [t for t in x if fl["intro"][t]]
    anc = [t for t in x if fl["anchor"][t] and not fl["dominated"][t]]
    dom = [t for t in x if fl["dominated"][t]]
    ms = 28 if T < 1000 else 8
    ax_w.scatter(pre, [trace.waad[t] for t in pre], marker="^", s=ms, color="#2563eb", zorder=3, label="preplan (Δ top-q)")
    ax_w.scatter(intro, [trace.waad[t] for t in intro], marker="D", s=ms, color="#9333ea", zorder=4, label="intro of dominated anchor")
    ax_f.scatter(anc, [trace.fai[t] for t in anc], marker="o", s=ms, color="#dc2626", zorder=3, label="anchor (FAI top-q)")
    ax_f.scatter(dom, [trace.fai[t] for t in dom], marker="o", s=ms, facecolors="none", edgecolors="#dc2626", zorder=3, label="dominated anchor")
    ax_w.set_ylabel("WAAD")
    ax_f.set_ylabel("FAI")
    ax_f.set_xlabel("response position")
    ax_w.set_title(f"{trace.label}: WAAD and FAI along the response ({T} tokens)", fontsize=11)
    for ax in (ax_w, ax_f):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
        ax.set_xlim(-0.5, T - 0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_head_spans(trace: Trace, path) -> Path:
    """Heatmap of head span (layers × heads), local heads outlined blue, global heads red."""
    if trace.head_span is None:
        raise ValueError(f"trace {trace.label!r} has no head spans (rollout records do not store them); inspect with --model")
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    span = trace.head_span
    nL, H = len(span), len(span[0])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * H + 2.5), max(2.6, 0.5 * nL + 1.6)), constrained_layout=True)
    im = ax.imshow(span, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="span (mean look-back distance, tokens)")
    for li in range(nL):
        for h in range(H):
            for heads, colour in ((trace.local_heads, "#60a5fa"), (trace.global_heads, "#f87171")):
                if heads is not None and heads[li][h]:
                    ax.add_patch(Rectangle((h - 0.5, li - 0.5), 1, 1, fill=False, edgecolor=colour, lw=2.5))
            if H <= 32 and nL <= 16:
                v = span[li][h]
                ax.text(h, li, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(H))
    ax.set_yticks(range(nL))
    ax.set_yticklabels([str(l) for l in (trace.layers or range(nL))])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{trace.label}: head span — local heads (blue), global heads (red)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

