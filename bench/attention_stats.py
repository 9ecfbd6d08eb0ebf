"""Benchmark: rlattn's streaming attention statistics vs the paper's way (full eager maps).

The paper's way: one eager forward with ``output_attentions=True`` (every layer's N×N maps), then
WAAD/FAI/spans from the maps of the selected layers (vectorised). rlattn's way: the model's own
sdpa forward with q/k captured at the 5 selected layers, stopped after the last one, statistics
reduced in chunks. Each measurement runs in a fresh subprocess; "peak extra memory" is the peak
RSS growth over the process's RSS after loading the model. Batch 1, random token ids.

    python bench/attention_stats.py                 # N = 512..4096 both, 8192 and 16384 rlattn only
    python bench/attention_stats.py --write         # also write the table into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

PROMPT = 64  # prompt tokens; the rest of N is the response


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def paper_way_stats(model, ids, attn, resp, cfg):
    """Statistics from full eager maps (vectorised), as an extra eager model would give them."""
    from rlattn.credit.attention_stats import _select, horizon_counts

    out = model(input_ids=ids, attention_mask=attn, output_attentions=True, use_cache=False)
    layers = cfg.resolve_layers(model.config.num_hidden_layers)
    A = torch.stack([out.attentions[l][0].float() for l in layers])  # [nL, H, N, N]
    del out
    N = ids.shape[1]
    t = torch.arange(N, device=ids.device)
    dist = (t[:, None] - t[None, :]).clamp(min=0).float()  # [N, N]
    R = resp[0]
    span = ((A * dist).sum(-1)[..., R]).mean(-1)  # [nL, H]
    local = _select(span[None], cfg.local_quantile, False)[0]
    glob = _select(span[None], cfg.global_quantile, True)[0]
    A_loc = A[local].mean(0)  # [N, N]
    A_glob = A[glob].mean(0)
    waad = torch.where(R, (A_loc * dist.clamp(max=cfg.window)).sum(-1), 0.0)
    lo, hi = cfg.fai_horizon
    band = (t[:, None] - t[None, :] >= lo) & (t[:, None] - t[None, :] <= hi) & R[:, None]  # [t, s]
    fai = (A_glob * band).sum(0) / horizon_counts(resp, lo, hi)[0]
    return waad, fai, span


def child(method: str, n: int, model_dir: str, repeats: int = 1) -> None:
    from transformers import AutoModelForCausalLM

    from rlattn.credit.attention_stats import AttentionStatsConfig, compute_attention_stats

    impl = "eager" if method == "paper" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=impl).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)
    attn = torch.ones(1, n, dtype=torch.long)
    resp = torch.zeros(1, n, dtype=torch.bool)
    resp[:, PROMPT:] = True
    cfg = AttentionStatsConfig()
    with torch.no_grad():  # warm-up on a small input (kernels, allocator)
        w = 128
        if method == "paper":
            paper_way_stats(model, ids[:, :w], attn[:, :w], resp[:, :w], cfg)
        elif method == "plain":
            model(input_ids=ids[:, :w], attention_mask=attn[:, :w])
        else:
            compute_attention_stats(model, ids[:, :w], attn[:, :w], resp[:, :w], cfg)
    base = _current_rss_mb()
    times, peak = [], None
    for _ in range(repeats):  # time = the fastest repeat; memory = the first run's peak
        t0 = time.perf_counter()
        with torch.no_grad():
            if method == "paper":
                waad, fai, span = paper_way_stats(model, ids, attn, resp, cfg)
            elif method == "plain":
                model(input_ids=ids, attention_mask=attn, use_cache=False)
                waad = fai = span = None
            else:
                s = compute_attention_stats(model, ids, attn, resp, cfg)
                waad, fai, span = s.waad[0], s.fai[0], s.head_span[0]
        times.append(time.perf_counter() - t0)
        if peak is None:
            peak = _rss_mb() - base
    res = {"time_s": min(times), "peak_extra_mb": max(peak, 0.0)}
    if waad is not None:
        res["waad_sum"] = float(waad.sum())
        res["fai_nansum"] = float(torch.nan_to_num(fai).sum())
    print(json.dumps(res))


def main() -> None:
    from _common import command, machine, run_child, write_section

    from rlattn.credit.attention_stats import default_layers
    from rlattn.models import DEFAULT_MODEL, resolve_model

    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--long", type=int, nargs="*", default=[8192, 16384], help="rlattn only")
    p.add_argument("--paper-max-gb", type=float, default=14.0, help="skip the paper's way above this estimated map size")
    p.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per cell for --lengths (min is reported); --long runs once")
    a = p.parse_args()
    model_dir = resolve_model(DEFAULT_MODEL)
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    L, H = c.num_hidden_layers, c.num_attention_heads
    rows = []
    header = (
        "| N | rlattn time (s) | rlattn peak extra (MB) | paper's way time (s) | paper's way peak extra (MB) "
        "| speed-up | memory ratio | plain sdpa forward (s) |\n|---|---|---|---|---|---|---|---|"
    )
    print(header)
    for n in a.lengths + a.long:
        reps = str(a.repeats if n in a.lengths else 1)
        r = json.loads(run_child([__file__, "--child", "rlattn", str(n), model_dir, reps], timeout=3600))
        plain = json.loads(run_child([__file__, "--child", "plain", str(n), model_dir, reps], timeout=3600))
        maps_gb = L * H * n * n * 4 / 2**30
        if n in a.lengths and maps_gb <= a.paper_max_gb:
            pw = json.loads(run_child([__file__, "--child", "paper", str(n), model_dir, reps], timeout=3600))
            check = abs(pw["waad_sum"] - r["waad_sum"]) / max(1.0, abs(pw["waad_sum"]))
            if check > 1e-3:
                print(f"WARNING: WAAD sums differ at N={n}: {pw['waad_sum']} vs {r['waad_sum']}", file=sys.stderr)
            paper = f"{pw['time_s']:.2f} | {pw['peak_extra_mb']:.0f}"
            ratios = f"{pw['time_s'] / r['time_s']:.2f}x | {pw['peak_extra_mb'] / max(r['peak_extra_mb'], 1):.1f}x"
        elif n in a.lengths:
            paper = f"not run: {L} layers of fp32 maps alone = {maps_gb:.0f} GB (+ eager temporaries) on a 24 GiB machine | -"
            ratios = "- | -"
        else:
            paper, ratios = "not run | -", "- | -"
        row = f"| {n} | {r['time_s']:.2f} | {r['peak_extra_mb']:.0f} | {paper} | {ratios} | {plain['time_s']:.2f} |"
        rows.append(row)
        print(row, flush=True)
    body = (
        "## Attention statistics: rlattn's streaming engine vs the paper's full eager maps\n\n"
        f"Model: embedded SmolLM2-135M-Instruct ({L} layers, {H} query heads), fp32, batch 1, "
        f"{PROMPT}-token prompt, default AttentionStatsConfig (5 layers {default_layers(L)}, W=10, FAI 10..100).\n"
        f"Each cell is a fresh subprocess; time = fastest of {a.repeats} repeats for N in {a.lengths} (one run above); "
        "peak extra = peak RSS growth over the loaded model (first run). "
        "Speed-up and memory ratio = paper's way / rlattn, measured side by side in this run. "
        "The last column is one plain sdpa forward of the whole model (all layers + logits), for scale.\n\n"
        f"Machine: {machine()}  \nCommand: `{command()}`\n\n" + header + "\n" + "\n".join(rows) + "\n"
    )
    if a.write:
        write_section("attention_stats", body)
    print("\n" + body)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 1)
    else:
        main()
