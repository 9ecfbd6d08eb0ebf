"""GPU benchmark: rlattn's streaming attention statistics vs the paper's full eager maps, Qwen3-4B shape.

The CUDA counterpart of bench/attention_stats.py, for bench/gpu_check.sh. Model: random weights in
bf16 with Qwen3-4B-Base's shapes (36 layers, 32 query / 8 KV heads, head_dim 128, hidden 2560),
built only up to layer 24, the last one the default statistics read (layers 12, 15, 18, 21, 24):
rlattn's pass stops there, and the paper's way needs only those layers' maps. Batch 1, random
token ids, a 64-token prompt, default AttentionStatsConfig apart from the layers.

- rlattn: ``compute_attention_stats`` on the sdpa model (q/k captured, fp32 softmax in chunks of
  query rows; ``attn_memory_budget_mb`` 256, the default, and 2048).
- the paper's way: one eager forward with ``output_attentions=True`` (every kept layer's N×N maps
  in bf16), then the statistics from the selected layers' maps in fp32 (bench/attention_stats.py's
  ``paper_way_stats``). Run only where its estimated memory fits the GPU.
- for scale: one sdpa forward of the kept layers (hidden states only, no logits).

Time: the fastest of ``--repeats`` runs after a warm-up, with CUDA synchronised. Memory: the peak
of ``torch.cuda.max_memory_allocated`` above what the model holds. Writes
``attention_stats.md`` and ``attention_stats.json`` into ``--out``.

    python bench/gpu_attention_stats.py --out "$OUT"              # N = 1K, 2K, 4K, 8K, 16K, 32K
    python bench/gpu_attention_stats.py --device cpu --smoke --out /tmp/x   # tiny shapes, CPU (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

PROMPT = 64
BUDGETS_MB = (256.0, 2048.0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn, device, repeats):
    """(fastest time in s, peak extra memory in MB or None on CPU, last result)."""
    result, times, peak = None, [], None
    for i in range(repeats):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if device.type == "cuda" and i == 0:
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return min(times), peak, result


def paper_way_bytes(n: int, kept_layers: int, heads: int, n_selected: int) -> int:
    """Estimated peak of the paper's way: bf16 maps of every kept layer, plus the selected layers'
    maps in fp32 and two fp32 temporaries of that size, plus one layer's fp32 eager softmax."""
    maps = kept_layers * heads * n * n * 2
    selected = 3 * n_selected * heads * n * n * 4
    eager_tmp = 2 * heads * n * n * 4
    return maps + selected + eager_tmp


def run(args) -> dict:
    from _common import machine

    from attention_stats import paper_way_stats
    from gpu_models import SHAPES, build_model, qwen3_config, set_attn_implementation, truncated_stats_model
    from rlattn.credit.attention_stats import AttentionStatsConfig, compute_attention_stats

    device = torch.device(args.device)
    if args.smoke:  # tiny Qwen3 with the same structure (GQA 4:1, q/k norm), for the CPU tests
        config = qwen3_config("qwen3-4b", hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                              intermediate_size=128, vocab_size=512, keep_layers=7, num_hidden_layers=12)
        layers = [4, 5, 6]
        dtype = torch.float32
        model = build_model(config, device=device, dtype=dtype)
        shape, full_depth = "qwen3-4b scaled down (smoke)", 12
    else:
        dtype = torch.bfloat16
        model, layers = truncated_stats_model(args.shape, device=device, dtype=dtype)
        shape, full_depth = args.shape, SHAPES[args.shape]["num_hidden_layers"]
    c = model.config
    H, kept = c.num_attention_heads, c.num_hidden_layers
    model_mb = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    total_bytes = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else args.cpu_memory_gb * 2**30
    cfgs = {b: AttentionStatsConfig(layers=layers, memory_budget_mb=b) for b in BUDGETS_MB}
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        ids = torch.randint(0, c.vocab_size, (1, n), generator=gen).to(device)
        attn = torch.ones(1, n, dtype=torch.long, device=device)
        resp = torch.zeros(1, n, dtype=torch.bool, device=device)
        resp[:, PROMPT:] = True
        return ids, attn, resp

    with torch.no_grad():  # warm-up: kernels, allocator, both attention implementations
        w = batch(2 * PROMPT)
        compute_attention_stats(model, *w, cfgs[BUDGETS_MB[0]])
        set_attn_implementation(model, "eager")
        paper_way_stats(model, *w, cfgs[BUDGETS_MB[0]])
        set_attn_implementation(model, "sdpa")

    rows = []
    for n in args.lengths:
        ids, attn, resp = batch(n)
        reps = args.repeats if n <= 8192 else 1
        row = {"N": n, "repeats": reps}
        with torch.no_grad():
            for b, cfg in cfgs.items():
                t, peak, s = _measure(lambda: compute_attention_stats(model, ids, attn, resp, cfg), device, reps)
                row[f"rlattn_{int(b)}mb"] = {"time_s": t, "peak_extra_mb": peak}
            ours = s
            t, peak, _ = _measure(lambda: model.model(input_ids=ids, attention_mask=attn, use_cache=False), device, reps)
            row["sdpa_forward"] = {"time_s": t, "peak_extra_mb": peak}
            need = paper_way_bytes(n, kept, H, len(layers))
            if need > args.paper_fraction * total_bytes:
                row["paper"] = {"skipped": f"estimated {need / 2**30:.0f} GiB > {args.paper_fraction:.0%} of {total_bytes / 2**30:.0f} GiB"}
            else:
                set_attn_implementation(model, "eager")
                try:
                    t, peak, (waad, fai, _) = _measure(lambda: paper_way_stats(model, ids, attn, resp, cfgs[BUDGETS_MB[0]]), device, reps)
                    R = resp[0]
                    row["paper"] = {"time_s": t, "peak_extra_mb": peak, "estimated_gib": need / 2**30,
                                    "max_abs_diff_waad": float((waad[R] - ours.waad[0][R]).abs().max()),
                                    "max_abs_diff_fai": float((fai - ours.fai[0]).nan_to_num().abs().max())}
                except torch.OutOfMemoryError as e:
                    row["paper"] = {"skipped": f"out of memory ({str(e).splitlines()[0][:120]})"}
                finally:
                    set_attn_implementation(model, "sdpa")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"shape": shape, "shape_config": SHAPES.get(args.shape) if not args.smoke else None, "kept_layers": kept,
            "stats_layers": layers, "heads": H, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
            "dtype": str(dtype), "prompt": PROMPT, "model_mb": model_mb, "machine": machine(), "rows": rows,
            "full_depth_layers": full_depth,
            "note": "paper's-way memory is for the truncated model; the paper's extra eager model keeps all layers' maps"}


def _fmt(cell, key="time_s", spec=".3f"):
    if cell is None or "skipped" in cell:
        return "-"
    v = cell.get(key)
    return "n/a" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    b0, b1 = (int(b) for b in BUDGETS_MB)
    lines = [
        "## Attention statistics on GPU: rlattn's streaming engine vs the paper's full eager maps",
        "",
        f"Model: random {res['shape']}, {res['dtype']}, decoder built up to layer {res['kept_layers'] - 1} "
        f"(of {res['full_depth_layers']}); statistics layers {res['stats_layers']}, {res['heads']} query / "
        f"{res['kv_heads']} KV heads, head_dim {res['head_dim']}; batch 1, {res['prompt']}-token prompt. "
        "Time: fastest of the repeats (1 above N=8192); memory: peak allocated above the model. "
        f"rlattn at attn_memory_budget_mb {b0} (default) and {b1}. Paper's way: eager forward with "
        "output_attentions, statistics from the maps (where its estimated memory fits); its memory is for the "
        "truncated model, less than the paper's full-depth eager model would take.",
        "",
        f"Machine: {res['machine']}. Command: `bash bench/gpu_check.sh` (bench/gpu_attention_stats.py)",
        "",
        f"| N | rlattn time (s) | rlattn peak (MB) | rlattn {b1} MB budget: time (s) / peak (MB) | paper's way time (s) "
        "| paper's way peak (MB) | speed-up | memory ratio | sdpa forward of the kept layers (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        a, big, p = r[f"rlattn_{b0}mb"], r[f"rlattn_{b1}mb"], r["paper"]
        if "skipped" in p:
            paper, ratio = f"not run: {p['skipped']} | -", "- | -"
        else:
            paper = f"{_fmt(p)} | {_fmt(p, 'peak_extra_mb', '.0f')}"
            mem = "n/a" if p["peak_extra_mb"] is None else f"{p['peak_extra_mb'] / max(a['peak_extra_mb'], 1):.1f}x"
            ratio = f"{p['time_s'] / a['time_s']:.2f}x | {mem}"
        lines.append(f"| {r['N']} | {_fmt(a)} | {_fmt(a, 'peak_extra_mb', '.0f')} | {_fmt(big)} / {_fmt(big, 'peak_extra_mb', '.0f')} "
                     f"| {paper} | {ratio} | {_fmt(r['sdpa_forward'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_out", help="folder for attention_stats.md / .json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="qwen3-4b")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paper-fraction", type=float, default=0.85, help="run the paper's way when its estimate is below this share of GPU memory")
    p.add_argument("--smoke", action="store_true", help="tiny scaled-down shapes (CPU tests of this script)")
    p.add_argument("--cpu-memory-gb", type=float, default=8.0, help="memory assumed for the paper's-way estimate on CPU")
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_attention_stats: no CUDA device; run on the GPU machine (bench/gpu_check.sh) or pass --device cpu --smoke")
    res = run(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_stats.json").write_text(json.dumps(res, indent=1))
    (out / "attention_stats.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
