"""The passes that capture attention statistics, with prompts shared (``share_prompt_prefix``) or as
whole rows, side by side on the main recipe's shapes.

    python bench/shared_capture.py [--prompts 4] [--per_prompt 8] [--length 80] [--repeats 3] [--write]

On the embedded model with the main recipe's LoRA, for a generation batch of ``--prompts`` prompts
x ``--per_prompt`` completions of ``--length`` tokens (the recipe: 4 x 8 of <= 80), it times:

- the **piggyback** pass: TRL's no-grad old-log-prob pass over the whole generation batch, in
  micro-batches of ``--per_prompt`` rows (one prompt each, as TRL runs it), with the statistics
  captured: what the main recipe runs once per generation batch;
- the **fused** pass: one micro-batch's loss forward + backward with the statistics captured in
  the forward: what the default layout (``steps_per_generation == gradient_accumulation_steps``)
  runs per micro-batch.

Each with ``share_prompt_prefix`` off (whole rows: what a capture ran before commit "capture on
the shared pass") and on. The variants take turns within each repeat; medians after a warm-up.
The table also gives the largest difference between the two ways' WAAD and FAI (they are equal up
to float round-off, tests/rlattn/test_shared_prompt.py). ``--write`` puts it into docs/benchmarks.md
(section ``shared_capture``).
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
from credit_overhead import ROOT, _batch, _trainer  # noqa: E402


def _grouped(trainer, ds, prompts: int, per_prompt: int, length: int) -> dict:
    """``prompts`` distinct prompts, each repeated ``per_prompt`` times in consecutive rows (the order
    TRL generates in), random completions of ``length``."""
    one = _batch(trainer, ds, prompts, length)
    rows = torch.arange(prompts).repeat_interleave(per_prompt)  # [B]
    gen = torch.Generator().manual_seed(1)
    B = prompts * per_prompt
    return {"prompt_ids": one["prompt_ids"][rows], "prompt_mask": one["prompt_mask"][rows],
            "completion_ids": torch.randint(100, 40000, (B, length), generator=gen),
            "completion_mask": torch.ones((B, length), dtype=torch.long),
            "advantages": torch.randn(B, generator=gen), "num_items_in_batch": torch.tensor(float(per_prompt * length))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "anchor_credit.yaml"))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--per_prompt", type=int, default=8)
    p.add_argument("--length", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()

    import rlattn.trainer as core

    trainer, ds = _trainer(args.recipe, args.per_prompt, args.length)
    big = _grouped(trainer, ds, args.prompts, args.per_prompt, args.length)
    ids = torch.cat([big["prompt_ids"], big["completion_ids"]], 1)  # [B, P + C]
    am = torch.cat([big["prompt_mask"], big["completion_mask"]], 1)
    micro = {k: (v[: args.per_prompt] if torch.is_tensor(v) and v.ndim else v) for k, v in big.items()}  # one prompt
    shared_calls = []
    real = core.shared_prompt_logps
    core.shared_prompt_logps = lambda *a, **k: shared_calls.append(1) or real(*a, **k)
    finished = []
    finish = trainer._finish_fused
    trainer._finish_fused = lambda inputs, cap: finished.append(cap) or finish(inputs, cap)

    def piggyback(share: bool):
        def run():
            trainer.args.share_prompt_prefix = share
            cap = trainer._pass_capture = trainer._new_capture(big, stop_early=False)
            with torch.no_grad():
                trainer._get_per_token_logps_and_entropies(trainer.model, ids, am, args.length, batch_size=args.per_prompt)
            return cap.stats.result()
        return run

    def fused(share: bool):
        def run():
            trainer.args.share_prompt_prefix = share
            b = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in micro.items()}
            b["credit_row"] = torch.arange(args.per_prompt)
            trainer._fused_batch = {"B": args.per_prompt, "T": args.length, "inert": False, "parts": {}, "mode": "train",
                                    "cycle_start": time.perf_counter(), "n_local": args.per_prompt}
            finished.clear()
            trainer.model.zero_grad(set_to_none=True)
            with trainer.accelerator.autocast():
                out = trainer._compute_loss(trainer.model, b)
            out.backward()
            return finished[0].stats.result()
        return run

    variants = {"piggyback, whole rows": piggyback(False), "piggyback, shared": piggyback(True),
                "fused, whole rows": fused(False), "fused, shared": fused(True)}
    times = {name: [] for name in variants}
    stats = {}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            before = len(shared_calls)
            t0 = time.perf_counter()
            stats[name] = fn()
            times[name].append(time.perf_counter() - t0)
            if (len(shared_calls) > before) != name.endswith("shared"):
                raise RuntimeError(f"variant {name!r} did not run the pass it names")
    med = {n: statistics.median(v) for n, v in times.items()}

    def gap(a, b) -> float:
        resp = a.waad != 0
        fai = torch.nan_to_num(a.fai - b.fai)
        return max(float((a.waad - b.waad)[resp].abs().max()), float(fai.abs().max()))

    B = args.prompts * args.per_prompt
    P = int(big["prompt_ids"].shape[1])
    lines = [f"Machine: {machine()}.", f"Command: `{command()}`; medians of {args.repeats} interleaved runs after a warm-up.", "",
             "| pass | rows x (prompt + completion) | whole rows (s) | shared (s) | speed-up | max abs difference of WAAD/FAI |",
             "|---|---|---:|---:|---:|---:|"]
    for kind, rows in (("piggyback", f"{B} = {args.prompts} x {args.per_prompt}"), ("fused", f"{args.per_prompt} = 1 x {args.per_prompt}")):
        whole, shared = med[f"{kind}, whole rows"], med[f"{kind}, shared"]
        label = ("old-log-prob pass with capture (no grad), micro-batches of " + str(args.per_prompt)
                 if kind == "piggyback" else "loss forward with capture + backward, one micro-batch")
        lines.append(f"| {kind}: {label} | {rows} x ({P} + {args.length}) | {whole:.2f} | {shared:.2f} | {whole / shared:.2f}x "
                     f"| {gap(stats[f'{kind}, whole rows'], stats[f'{kind}, shared']):.1e} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("shared_capture", "## Captured passes with prompts shared (`bench/shared_capture.py`)\n\n" + table)


if __name__ == "__main__":
    main()
