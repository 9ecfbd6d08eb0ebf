"""GPU benchmark: attention credit's cost as a share of one GRPO step, at 1K and 8K completion tokens.

For bench/gpu_check.sh. Policy: the random Qwen3-0.6B-shaped model of bench/gpu_models.py (0.44B
parameters without the embedding) in bf16 with LoRA r=16 on q/k/v/o, sdpa. One generation batch
is B=8 completions of one 128-token prompt, in micro-batches of 4 (per_device_train_batch_size).

Two measurements:

1. **Parts of a step, timed one by one** (T = 1024 and 8192 completion tokens, random ids):
   - credit: the statistics as one extra pass that stops after the last selected layer
     (``compute_attention_stats`` per micro-batch) plus the coupled γ and the token sets. This is
     the most the credit costs: the trainer's default, fused path reads q/k inside the loss
     forward instead and saves that forward;
   - optimisation: per micro-batch the loss forward (log-probs of the completion), backward, then
     one AdamW step;
   - generation: HF ``generate`` of 128 tokens (``--gen-probe``) at the start and at the end of
     the completion, per-token time averaged and scaled to T (an estimate: decoding all 8K tokens
     would take minutes of the budget).
   Shares: credit / (generation + optimisation + credit), and credit / (optimisation + credit),
   the bound where generation is free (e.g. a separate vLLM server).
2. **The real trainer at T = 1024**: ``scripts/grpo.py`` for 2 steps with ``min_new_tokens`` =
   ``max_completion_length``; the trainer's own ``credit/stats_time_s`` and
   ``credit/stats_time_frac`` of the second step (whatever path it takes, fused by default).

Writes ``credit_overhead.md`` and ``credit_overhead.json`` into ``--out``.

    python bench/gpu_credit_overhead.py --out "$OUT"
    python bench/gpu_credit_overhead.py --device cpu --smoke --out /tmp/x    # tiny, CPU (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPT, BATCH, MICRO = 128, 8, 4


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _policy(args, device):
    from gpu_models import build_model, policy_model, qwen3_config
    from rlattn.testing import byte_tokenizer

    tok = byte_tokenizer()
    if args.smoke:
        config = qwen3_config("qwen3-0.6b", hidden_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=16, intermediate_size=128, vocab_size=len(tok))
        model = build_model(config, device=device, dtype=torch.float32, init_std=0.2)
    else:
        model = policy_model(tok, device=device)
    return model, tok


def parts(args, device) -> list[dict]:
    """Measurement 1: generation, optimisation and credit of one batch, timed separately."""
    import peft

    from rlattn.credit import AttentionStatsConfig, CreditConfig, compute_attention_stats, get_credit_fn
    from rlattn.credit.selection import select_tokens

    model, _ = _policy(args, device)
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    stats_cfg, credit_cfg = AttentionStatsConfig(), CreditConfig(strategy="coupled")  # the paper's defaults
    coupled = get_credit_fn("coupled")
    vocab = model.config.vocab_size
    rows = []
    for T in args.lengths:
        g = torch.Generator().manual_seed(T)
        ids = torch.randint(0, vocab - 3, (BATCH, PROMPT + T), generator=g).to(device)
        am = torch.ones_like(ids)
        resp = torch.zeros_like(ids, dtype=torch.bool)
        resp[:, PROMPT:] = True
        mask = resp[:, PROMPT:]
        adv = torch.randn(BATCH, device=device)

        def credit():
            waad, fai = [], []
            for i in range(0, BATCH, MICRO):
                s = compute_attention_stats(model, ids[i:i + MICRO], am[i:i + MICRO], resp[i:i + MICRO], stats_cfg)
                waad.append(s.waad[:, PROMPT:])
                fai.append(s.fai[:, PROMPT:])
            waad, fai = torch.cat(waad), torch.cat(fai)  # [B, T]
            gamma = coupled(waad=waad, fai=fai, mask=mask, config=credit_cfg)  # [B, T]
            select_tokens(waad, fai, mask, credit_cfg)
            return gamma

        def optimisation():
            model.train()
            for i in range(0, BATCH, MICRO):
                x = ids[i:i + MICRO]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = model(input_ids=x, attention_mask=am[i:i + MICRO], logits_to_keep=T + 1, use_cache=False).logits
                logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, x[:, PROMPT:, None])[..., 0]  # [b, T]
                loss = -(logps * adv[i:i + MICRO, None]).mean()
                loss.backward()
                del logits, logps, loss
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.eval()

        def generate(start):
            x = ids[:, :start]
            with torch.no_grad():
                return model.generate(input_ids=x, attention_mask=am[:, :start], max_new_tokens=probe,
                                      min_new_tokens=probe, do_sample=True, pad_token_id=0)

        credit()  # warm-up at this length (kernels, allocator)
        optimisation()
        t_credit, _ = _timed(credit, device)
        t_opt, _ = _timed(optimisation, device)
        probe = min(args.gen_probe, T)
        starts = [PROMPT, PROMPT + T - probe] if T > probe else [PROMPT]
        generate(PROMPT)
        per_token = sum(_timed(lambda: generate(s), device)[0] for s in starts) / len(starts) / probe
        t_gen = per_token * T
        row = {"T": T, "B": BATCH, "micro_batch": MICRO, "credit_s": t_credit, "optimisation_s": t_opt,
               "generation_s_est": t_gen, "generation_s_per_token": per_token,
               "share_of_step": t_credit / (t_gen + t_opt + t_credit), "share_without_generation": t_credit / (t_opt + t_credit)}
        if device.type == "cuda":
            row["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def trainer_run(args, device, work: Path) -> dict:
    """Measurement 2: the trainer's own credit metrics, 2 GRPO steps at T = 1024 (or the smoke length)."""
    model, tok = _policy(args, device)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    del model
    T = args.trainer_length
    cmd = [sys.executable, str(ROOT / "scripts/grpo.py"), str(ROOT / "recipes/anchor_credit.yaml"),
           "--model_name_or_path", str(work / "model"), "--output_dir", str(work / "run"),
           "--dtype", "bfloat16" if device.type == "cuda" else "float32", "--bf16", str(device.type == "cuda").lower(),
           "--use_cpu", str(device.type != "cuda").lower(), "--use_peft", "true",
           "--reward_funcs", "rlattn.testing:digit_reward", "--reward_weights", "1.0", "--dataset_limit", "16",
           "--per_device_train_batch_size", str(BATCH), "--num_generations", str(BATCH),
           "--max_completion_length", str(T), "--generation_kwargs", json.dumps({"min_new_tokens": T}),
           "--max_steps", "2", "--save_strategy", "no", "--logging_steps", "1", "--credit_log_samples", "0",
           "--gradient_checkpointing", "false", "--report_to", "none"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.trainer_timeout, cwd=str(work))
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return {"T": T, "error": out.stderr[-3000:], "wall_s": wall}
    logs = [json.loads(l) for l in (work / "run/metrics.jsonl").read_text().splitlines()]
    steps = [e for e in logs if "credit/stats_time_s" in e]
    last = steps[-1]
    keys = ("step", "credit/stats_time_s", "credit/stats_time_frac", "credit/extra_forward", "credit/piggybacked",
            "step_time", "completions/mean_length", "loss")
    return {"T": T, "wall_s": wall, **{k: last.get(k) for k in keys}}


def markdown(res: dict) -> str:
    lines = [
        "## Credit overhead on GPU: share of one GRPO step",
        "",
        f"Policy: random Qwen3-0.6B-shaped model ({res['params_b']:.2f}B parameters without the embedding), "
        f"{res['dtype']}, LoRA r=16 (q/k/v/o), sdpa; {BATCH} completions of one {PROMPT}-token prompt, "
        f"micro-batches of {MICRO}. Machine: {res['machine']}. Command: `bash bench/gpu_check.sh` (bench/gpu_credit_overhead.py)",
        "",
        "Parts timed one by one. Credit = one extra statistics pass (stops after the last selected layer) + coupled γ "
        "+ token sets: the most it costs (the default fused path reads q/k in the loss forward instead). Generation "
        f"is estimated from {res['gen_probe']} decoded tokens at the start and end of the completion.",
        "",
        "| completion tokens T | generation (s, est.) | loss fwd+bwd+AdamW (s) | credit (s) | credit share of the step "
        "| credit share without generation |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["parts"]:
        lines.append(f"| {r['T']} | {r['generation_s_est']:.2f} | {r['optimisation_s']:.3f} | {r['credit_s']:.3f} "
                     f"| {100 * r['share_of_step']:.1f}% | {100 * r['share_without_generation']:.1f}% |")
    tr = res.get("trainer")
    if tr:
        lines += ["", f"The trainer itself (`scripts/grpo.py`, 2 steps, T = {tr['T']} via min_new_tokens, second step): "]
        if "error" in tr:
            lines.append(f"failed after {tr['wall_s']:.0f} s: `{tr['error'].strip().splitlines()[-1][:300]}`")
        else:
            frac = tr.get("credit/stats_time_frac")
            lines.append(f"credit/stats_time_s {tr['credit/stats_time_s']:.3f} s, credit/stats_time_frac "
                         f"{100 * frac:.2f}% of the step, step_time {tr.get('step_time', float('nan')):.2f} s, "
                         f"credit/extra_forward {tr.get('credit/extra_forward')}, mean completion length "
                         f"{tr.get('completions/mean_length')}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--gen-probe", type=int, default=128, help="tokens decoded at the start and end of T to estimate generation")
    p.add_argument("--trainer-length", type=int, default=1024, help="completion tokens of the trainer run (0: skip it)")
    p.add_argument("--trainer-timeout", type=float, default=240)
    p.add_argument("--smoke", action="store_true", help="tiny model (CPU tests of this script)")
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_credit_overhead: no CUDA device; run on the GPU machine (bench/gpu_check.sh) or pass --device cpu --smoke")
    from _common import machine
    from gpu_models import count_parameters

    device = torch.device(a.device)
    model, _ = _policy(a, device)
    res = {"machine": machine(), "params_b": count_parameters(model) / 1e9, "dtype": str(next(model.parameters()).dtype),
           "gen_probe": a.gen_probe}
    del model
    res["parts"] = parts(a, device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "credit_overhead.json").write_text(json.dumps(res, indent=1))  # the parts, even if the trainer run hangs
    if a.trainer_length > 0:
        with tempfile.TemporaryDirectory() as work:
            res["trainer"] = trainer_run(a, device, Path(work))
        print(json.dumps(res["trainer"]), flush=True)
    (out / "credit_overhead.json").write_text(json.dumps(res, indent=1))
    (out / "credit_overhead.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
