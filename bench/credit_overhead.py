"""What attention credit costs per path (fused, piggyback, extra early-exit pass), side by side.

    python bench/credit_overhead.py [--lengths 96 1024 4096] [--batch 8] [--repeats 3] [--write [--section NAME]]

On the embedded model with the main recipe's LoRA (r 16 on q/k/v/o, bf16), for a micro-batch of
``--batch`` sequences (the recipe's prompt length, completions of each length), it times:

- ``loss``: TRL's loss forward + backward of the micro-batch (``_compute_loss`` + backward), γ given;
- ``fused``: the same with the statistics captured in that forward (the default path); its extra
  time over ``loss`` is the fused overhead;
- ``old_logp`` and ``piggyback``: TRL's no-grad old-log-prob pass without and with the capture;
  the difference is the piggyback overhead;
- ``extra``: the early-exit statistics pass alone (what the path without fusion pays).

Overheads are reported in seconds and as a share of ``loss`` (the step without generation and
optimizer, so the share of a full step is smaller: generation comes on top). All timings are
medians of ``--repeats`` runs after one warm-up each, in one process, the variants taking turns
within each repeat. Beside the wall-time differences (noisy on a shared CPU), the fused and
piggyback columns give the time the capture's reduction itself took inside the pass
(``StatsAccumulator.reduce_time``).
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

ROOT = Path(__file__).resolve().parents[1]


def _trainer(recipe: str, batch: int, length: int):
    from rlattn.backbones import BackboneArguments
    from rlattn.cli import build_policy, build_rewards, load_train_dataset, parse_grpo_args
    from rlattn.trainer import AttnCreditGRPOTrainer

    sa, ta, ma, _ = parse_grpo_args([recipe, "--max_steps", "1", "--save_strategy", "no", "--output_dir", "/tmp/rlattn_bench_overhead",
                                     "--per_device_train_batch_size", str(batch), "--num_generations", str(batch),
                                     "--steps_per_generation", "1", "--gradient_accumulation_steps", "1",
                                     "--max_completion_length", str(length), "--credit_log_samples", "0"], extra=(BackboneArguments,))
    ds = load_train_dataset(sa)
    model, tok, peft = build_policy(ma, ta)
    trainer = AttnCreditGRPOTrainer(model=model, reward_funcs=build_rewards(sa, ta), args=ta, train_dataset=ds,
                                    processing_class=tok, peft_config=peft)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer, ds


def _batch(trainer, ds, batch: int, length: int):
    """A micro-batch like a generation batch's: real prompts, random completion ids of ``length``."""
    tok = trainer.processing_class
    prompts = [ds[i]["prompt"] for i in range(batch)]
    ids = trainer._tokenize_prompts(prompts)[0]
    P = max(map(len, ids))
    prompt_ids = torch.full((batch, P), tok.pad_token_id)
    prompt_mask = torch.zeros((batch, P), dtype=torch.long)
    for i, row in enumerate(ids):
        prompt_ids[i, P - len(row):] = torch.tensor(row)
        prompt_mask[i, P - len(row):] = 1
    gen = torch.Generator().manual_seed(0)
    completion_ids = torch.randint(100, 40000, (batch, length), generator=gen)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": torch.ones((batch, length), dtype=torch.long),
            "advantages": torch.randn(batch, generator=gen), "num_items_in_batch": torch.tensor(float(batch * length))}


def _interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall time of each variant, and median of what it returns (seconds the statistics'
    reduction took inside the pass, or None). One warm-up each, then the variants take turns
    (A B C, A B C, ...), so a slow spell of this shared machine hits every variant alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    inner = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            r = fn()
            times[name].append(time.perf_counter() - t0)
            if r is not None:
                inner[name].append(r)
    return ({n: statistics.median(v) for n, v in times.items()},
            {n: statistics.median(v) for n, v in inner.items() if v})


def measure(recipe: str, batch: int, length: int, repeats: int) -> dict:
    trainer, ds = _trainer(recipe, batch, length)
    base = _batch(trainer, ds, batch, length)
    ids = torch.cat([base["prompt_ids"], base["completion_ids"]], 1)
    am = torch.cat([base["prompt_mask"], base["completion_mask"]], 1)
    finished = []
    finish = trainer._finish_fused
    trainer._finish_fused = lambda inputs, cap: finished.append(cap) or finish(inputs, cap)

    def loss(fused: bool):
        def run():
            b = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in base.items()}
            if fused:
                b["credit_row"] = torch.arange(batch)
                trainer._fused_batch = {"B": batch, "T": length, "inert": False, "parts": {}, "mode": "train",
                                        "cycle_start": time.perf_counter(), "n_local": batch}
            finished.clear()
            trainer.model.zero_grad(set_to_none=True)
            with trainer.accelerator.autocast():
                out = trainer._compute_loss(trainer.model, b)
            out.backward()
            return finished[0].stats.reduce_time if fused else None
        return run

    def old_logp(capture: bool):
        def run():
            cap = trainer._pass_capture = trainer._new_capture(base, stop_early=False) if capture else None
            with torch.no_grad():
                trainer._get_per_token_logps_and_entropies(trainer.model, ids, am, length, batch_size=batch)
            return cap.stats.reduce_time if capture else None
        return run

    def extra():
        with torch.no_grad():
            trainer._credit_forward(base, batch_size=batch)

    res = {"batch": batch, "prompt": int(base["prompt_ids"].shape[1]), "length": length}
    times, inner = _interleaved({"loss": loss(False), "fused": loss(True), "old_logp": old_logp(False),
                                 "piggyback": old_logp(True), "extra": extra}, repeats)
    res.update(times)
    res["fused_reduce"], res["piggyback_reduce"] = inner["fused"], inner["piggyback"]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "anchor_credit.yaml"))
    p.add_argument("--lengths", type=int, nargs="+", default=[96, 1024, 4096])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", action="store_true")
    p.add_argument("--section", default="credit_overhead", help="docs/benchmarks.md section that --write replaces")
    args = p.parse_args()
    rows = []
    for length in args.lengths:
        batch = args.batch if length <= 256 else max(2, args.batch * 256 // length)  # GRPO needs groups of >= 2
        r = measure(args.recipe, batch, length, args.repeats)
        rows.append(r)
        print(r, flush=True)
    lines = [f"Machine: {machine()}.", f"Command: `{command()}`; medians of {args.repeats} interleaved runs after a "
             "warm-up, seconds.", "",
             "| completion tokens | batch x (prompt + completion) | loss fwd+bwd | fused overhead (wall) | fused: reduction in the pass "
             "| piggyback overhead (wall) | piggyback: reduction in the pass | extra pass |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fused, pig = r["fused"] - r["loss"], r["piggyback"] - r["old_logp"]
        lines.append(f"| {r['length']} | {r['batch']} x ({r['prompt']} + {r['length']}) | {r['loss']:.2f} s | "
                     f"{fused:+.3f} s ({100 * fused / r['loss']:+.1f} %) | {r['fused_reduce']:.3f} s ({100 * r['fused_reduce'] / r['loss']:.1f} %) | "
                     f"{pig:+.3f} s ({100 * pig / r['loss']:+.1f} %) | {r['piggyback_reduce']:.3f} s ({100 * r['piggyback_reduce'] / r['loss']:.1f} %) | "
                     f"{r['extra']:.2f} s ({100 * r['extra'] / r['loss']:.1f} %) |")
    lines += ["", "Shares are of the micro-batch's loss forward + backward; a full step adds generation (the largest "
              "phase on CPU, `bench/step.py`) and the optimizer, so each path's share of a full step is smaller. "
              "*Wall*: the variant's time minus the same pass without statistics (noisy: two medians of a shared "
              "2-core machine). *Reduction in the pass*: the time the statistics' hooks spent reducing the captured "
              "q/k (StatsAccumulator.reduce_time), the part of the overhead the capture itself adds."]
    table = "\n".join(lines)
    print(table)
    if args.write:
        title = "" if args.section == "credit_overhead" else f" ({args.section})"
        write_section(args.section, f"## Credit overhead per path{title} (`bench/credit_overhead.py`)\n\n" + table)


if __name__ == "__main__":
    main()
