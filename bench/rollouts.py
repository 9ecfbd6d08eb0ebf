"""Benchmark: rollout tokens/s of the vLLM CPU engine vs the transformers backend, same prompts.

Both backends generate from the embedded SmolLM2-135M-Instruct in the same dtype (bf16 by
default), sampling at temperature 1 with up to ``--max-tokens`` completion tokens, from the same
chat-templated arithmetic prompts, at batch 8, 32 and 64 (each batch = that many prompts, one
completion each). tokens/s = completion tokens generated (summed over the batch) / wall seconds of
the generate call; one warm-up call per backend first, then the median of ``--repeats``. The vLLM
engine start-up is reported separately. With ``--lora-rank R`` (default 16; 0 skips it) a second
engine samples through a random rank-R LoRA adapter on q/k/v/o handed over as a vLLM ``LoRARequest``
(``lora_handover="adapter"``): the cost of vLLM's CPU LoRA kernels, which is why rlattn hands
LoRA policies over as merged weights by default. Must run where ``import vllm`` works (the venv made by
scripts/setup_vllm_cpu.sh). Numbers are only comparable on an otherwise idle machine: vLLM's CPU
backend pins and spin-waits its OpenMP threads, so it loses far more than HF to other processes on
the same cores.

    .venv-vllm/bin/python bench/rollouts.py [--batches 8 32 64] [--max-tokens 64] [--repeats 1] [--lora-rank 16] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, machine, write_section  # noqa: E402

from rlattn.rollouts.base import SamplingSpec  # noqa: E402
from rlattn.rollouts.hf_backend import HFRolloutBackend  # noqa: E402
from rlattn.rollouts.vllm_cpu import VLLMCPUBackend, VLLMCPUConfig  # noqa: E402


def prompts(tok, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        a, b = 3 + (7 * i) % 41, 2 + (5 * i) % 17
        msg = [{"role": "user", "content": f"What is {a} + {b}? Explain briefly, then put the final answer in \\boxed{{}}."}]
        out.append(tok.apply_chat_template(msg, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    return out


def timed(backend, ids, spec, repeats):
    backend.generate(ids[: min(4, len(ids))], spec)  # warm-up
    rates, toks = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        batch = backend.generate(ids, spec)
        dt = time.perf_counter() - t0
        rates.append(batch.num_completion_tokens / dt)
        toks.append(batch.num_completion_tokens)
    return statistics.median(rates), statistics.median(toks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--lora-rank", type=int, default=16, help="also time a LoRA-adapter engine (0: skip)")
    parser.add_argument("--write", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlattn.models import resolve_model

    path = resolve_model("embedded:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    spec = SamplingSpec(max_tokens=args.max_tokens, temperature=1.0)
    all_ids = prompts(tok, max(args.batches))

    engine = VLLMCPUBackend(VLLMCPUConfig(model=path, dtype=args.dtype, max_model_len=1024),
                            eos_token_ids=[tok.eos_token_id])
    t0 = time.perf_counter()
    engine.start()
    start_s = time.perf_counter() - t0
    rows = {}
    try:
        for b in args.batches:
            rows[b] = [timed(engine, all_ids[:b], spec, args.repeats)]
            print(f"vllm-cpu batch {b}: {rows[b][0][0]:.0f} tok/s", flush=True)
    finally:
        engine.close()  # free the engine's cores before timing transformers

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    lora = {}
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        policy = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)),
                                LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                           init_lora_weights=False))
        lora_engine = VLLMCPUBackend(VLLMCPUConfig(model=path, dtype=args.dtype, max_model_len=1024, enable_lora=True,
                                                   max_lora_rank=max(16, args.lora_rank), lora_handover="adapter"),
                                     eos_token_ids=[tok.eos_token_id])
        try:
            lora_engine.start()
            lora_engine.sync(policy, version=1)
            for b in args.batches:
                lora[b] = timed(lora_engine, all_ids[:b], spec, args.repeats)
                print(f"vllm-cpu + LoRA adapter batch {b}: {lora[b][0]:.0f} tok/s", flush=True)
        finally:
            lora_engine.close()
        del policy
    hf = HFRolloutBackend(model, tok)
    for b in args.batches:
        rows[b].append(timed(hf, all_ids[:b], spec, args.repeats))
        print(f"transformers batch {b}: {rows[b][1][0]:.0f} tok/s", flush=True)

    lines = [
        f"Rollout throughput, embedded SmolLM2-135M-Instruct, {args.dtype}, temperature 1, up to "
        f"{args.max_tokens} completion tokens; tokens/s summed over the batch (median of {args.repeats}).",
        f"vLLM CPU engine start-up (enforce_eager, in rlattn's engine process): {start_s:.1f} s.",
        f"Machine: {machine()}. Command: `{command()}`",
        "",
        "| batch | vllm-cpu tok/s | transformers tok/s | speed-up | tokens (vllm / hf) |"
        + (f" vllm-cpu + rank-{args.lora_rank} LoRA adapter tok/s |" if lora else ""),
        "|---:|---:|---:|---:|---:|" + ("---:|" if lora else ""),
    ]
    for b in args.batches:
        (v, vt), (h, ht) = rows[b]
        extra = f" {lora[b][0]:.0f} ({lora[b][0] / v:.2f}x of plain vllm) |" if lora else ""
        lines.append(f"| {b} | {v:.0f} | {h:.0f} | {v / h:.2f}x | {vt:.0f} / {ht:.0f} |" + extra)
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("rollouts", table)


if __name__ == "__main__":
    main()
