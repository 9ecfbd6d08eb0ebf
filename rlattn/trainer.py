"""``AttnCreditGRPOTrainer``: TRL's GRPOTrainer with attention-credit token-level advantages.

Plain GRPO gives every token of a response its sequence's group-normalised advantage A. Here, once
per generation batch, right after TRL has generated and scored it, we read WAAD and FAI off the
policy's own attention (the same weights that generated the batch), turn them into per-token
weights γ with the configured strategy, and hand TRL (B, T) advantages Ã[t] = γ[t]·A (credit-spec
§7). TRL's loss already accepts (B, T) advantages, so we subclass one hook,
``_generate_and_score_completions``, and never fork the loss.

Cost: when TRL runs its no-grad pass for old log-probs (num_iterations > 1, misaligned steps, or
vLLM importance sampling), the statistics are captured inside that pass: no extra forward at all.
Otherwise one early-exit pass runs the model only up to the last selected layer. ``uniform`` skips
the statistics and reproduces TRL's loss exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time

import torch
from trl import GRPOTrainer

from rlattn.credit.attention_stats import (
    _LayerReducer,
    compute_attention_stats,
    finalize_stats,
)
from rlattn.credit.capture import capture_qk, num_hidden_layers

logger = logging.getLogger(__name__)

# loss types whose math treats the advantage as a per-sequence quantity (trl-integration.md)
_SEQUENCE_ONLY_LOSSES = ("vespo", "luspo")


class _Piggyback:
    """Captures q/k during TRL's own no-grad old-log-prob pass and reduces them per sub-batch."""

    def __init__(self, stats_cfg, layers):
        self.cfg = stats_cfg
        self.layers = layers
        self.parts = []  # (reducer, attention_mask, response_mask) per sub-batch
        self.armed = True

    def reduce_call(self, model, input_ids, attention_mask, logits_to_keep, run):
        P = input_ids.size(1) - logits_to_keep
        resp = attention_mask.bool().clone()
        resp[:, :P] = False
        am = attention_mask.bool()
        state = {}

        def on_layer(layer, q, k, scaling):
            if layer == self.layers[0] or "reducer" not in state:  # a new sub-batch begins
                b0 = state.get("row", 0) + state.get("rows", 0)
                rows = q.shape[0]
                sub_resp = resp[b0 : b0 + rows]
                reducer = _LayerReducer(am[b0 : b0 + rows], _nonempty(sub_resp), self.cfg, len(self.layers))
                state.update(reducer=reducer, row=b0, rows=rows)
                self.parts.append((reducer, am[b0 : b0 + rows], sub_resp))
            state["reducer"](layer, q, k, scaling)

        with capture_qk(model, self.layers, on_layer, stop_after_last=False):
            return run()

    def result(self):
        reducers = [p[0] for p in self.parts]
        merged = reducers[0]
        merged.span_sum = torch.cat([r.span_sum for r in reducers])
        merged.waad_h = torch.cat([r.waad_h for r in reducers])
        merged.fai_h = torch.cat([r.fai_h for r in reducers])
        am = torch.cat([p[1] for p in self.parts])
        rm = torch.cat([p[2] for p in self.parts])
        return finalize_stats(merged, self.layers, am, _nonempty(rm), self.cfg)


def _nonempty(resp: torch.Tensor) -> torch.Tensor:
    """Give rows without response tokens their last position, so reductions stay finite.

    Such rows carry a zero loss mask (e.g. ``mask_truncated_completions``); their γ is discarded.
    """
    empty = ~resp.any(1)
    if empty.any():
        resp = resp.clone()
        resp[empty, -1] = True
    return resp


class AttnCreditGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages are reweighted per token by attention credit.

    Takes the same arguments as ``trl.GRPOTrainer``; ``args`` should be an
    :class:`rlattn.config.AttnCreditConfig` (a plain GRPOConfig means ``uniform`` credit).
    """

    def __init__(self, *args, **kwargs):
        from rlattn.credit.registry import get_credit_fn

        targs = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if targs is not None and hasattr(targs, "credit_config"):
            self.credit_config = targs.credit_config()
            self.stats_config = targs.attention_stats_config()
        else:
            from rlattn.credit.registry import CreditConfig

            self.credit_config = CreditConfig(strategy="uniform")
            self.stats_config = None
        self.credit_fn = get_credit_fn(self.credit_config.strategy)
        self.credit_uniform = self.credit_config.strategy == "uniform"
        if targs is not None and not self.credit_uniform:
            if getattr(targs, "use_liger_kernel", False):
                raise ValueError(
                    f"credit_strategy={self.credit_config.strategy!r} cannot be combined with use_liger_kernel=True: the "
                    "liger loss path is unverified with (B, T) advantages. Set use_liger_kernel: false or credit_strategy: uniform."
                )
            if targs.loss_type in _SEQUENCE_ONLY_LOSSES:
                raise ValueError(
                    f"loss_type={targs.loss_type!r} treats the advantage as a per-sequence quantity and cannot take token-level "
                    f"credit (credit_strategy={self.credit_config.strategy!r}). Use loss_type grpo, dapo, dr_grpo, bnpo, cispo or sapo."
                )
        super().__init__(*args, **kwargs)
        self._piggyback: _Piggyback | None = None
        self._loss_latents: torch.Tensor | None = None
        self.last_credit: dict | None = None
        self._last_cycle_start: float | None = None
        self._credit_layers = None
        if self.stats_config is not None:
            self._credit_layers = self.stats_config.resolve_layers(num_hidden_layers(self.model))

    # ---------------------------------------------------------------- TRL hooks

    def _trl_runs_old_logp_pass(self) -> bool:
        """Mirror of TRL's condition for computing ``old_per_token_logps`` in the generation phase."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        zt = self._loss_latents
        if zt is not None and model is self.model:  # latent noise: the rollouts' z̃ and their log-density
            policy = self.accelerator.unwrap_model(self.model)
            rows = input_ids.size(0)
            if zt.size(0) != rows or (kwargs.get("batch_size") or rows) < rows:
                raise RuntimeError(f"latent noise: {zt.size(0)} sampled latents for a pass over {rows} rows in chunks of "
                                   f"{kwargs.get('batch_size')}; the loss pass must see the whole batch at once")
            with policy.using_sampled_latents(zt):
                logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
            if policy.last_latent_logp is None:
                raise RuntimeError("latent noise: the loss pass inserted no latents (no <bot> <lat>×K in the prompts?)")
            # log π(y, z̃ | x) = log N(z̃; z_θ(x), σ²) + Σ_t log π(y_t | x, z̃, y_<t): the density rides on token 0
            logps = torch.cat([logps[:, :1] + policy.last_latent_logp[:, None].to(logps.dtype), logps[:, 1:]], 1)
            return logps, entropies, aux
        pig = self._piggyback
        if pig is not None and pig.armed and model is self.model and not kwargs.get("compute_entropy", False):
            pig.armed = False  # only TRL's first no-grad call (old log-probs) is the policy's own pass
            parent = super()._get_per_token_logps_and_entropies
            return pig.reduce_call(
                model, input_ids, attention_mask, logits_to_keep,
                lambda: parent(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs),
            )
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    def _compute_loss(self, model, inputs):
        self._loss_latents = inputs.get("sampled_latents")  # [B, K, D] with latent noise, else None
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_latents = None

    def _generate_and_score_completions(self, inputs):
        cycle_start = time.perf_counter()
        needs_stats = not self.credit_uniform and self.credit_config.strategy not in ("random", "high_entropy")
        self._piggyback = _Piggyback(self.stats_config, self._credit_layers) if needs_stats and self._trl_runs_old_logp_pass() else None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            pig, self._piggyback = self._piggyback, None
        mode = "train" if self.model.training else "eval"
        sampled = self._sampled_latents_of_last_generation(output)
        if sampled is not None:
            output["sampled_latents"] = sampled  # [B, K, D]: shuffled and split with the rest of the batch
        if self.credit_uniform:
            output["advantages"] = output["advantages"][:, None].expand(-1, output["completion_ids"].size(1)).clone()  # [B, T]
            return output

        t0 = time.perf_counter()
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        P = prompt_ids.size(1)
        mask = completion_mask.bool()  # [B, T]
        if "tool_mask" in output:
            mask = mask & output["tool_mask"].bool()
        entropies = None
        piggybacked = False
        latent_diag = getattr(self.args, "backbone", "none") != "none" and getattr(self.args, "latent_diagnostics", False)
        collector = None
        if latent_diag and needs_stats:  # ride along on the statistics pass below, if it runs
            from rlattn.backbones.diagnostics import CompletionAttention

            collector = CompletionAttention(torch.cat([prompt_mask, completion_mask], 1), P,
                                            self.accelerator.unwrap_model(self.model).latent_config.num_sinks)
        if needs_stats:
            if pig is not None and pig.parts:
                stats = pig.result()
                waad, fai = stats.waad, stats.fai  # [B, P+T]
                piggybacked = True
            else:
                waad, fai = self._early_exit_stats(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                                   output.get("pixel_values"), collector,
                                                   output.get("sampled_latents"))  # [B, P+T]
            waad, fai = waad[:, P:], fai[:, P:]  # [B, T]
        else:
            waad = torch.zeros(mask.shape, device=mask.device)
            fai = torch.full(mask.shape, float("nan"), device=mask.device)
        if self.credit_config.strategy == "high_entropy":
            entropies = self._policy_entropies(prompt_ids, prompt_mask, completion_ids, completion_mask)
        cfg = self.credit_config
        if cfg.strategy == "random":  # a fresh draw per batch, reproducible from (seed, step)
            cfg = dataclasses.replace(cfg, seed=cfg.seed * 1_000_003 + int(self.state.global_step) * 7919 + self.accelerator.process_index)
        gamma = self.credit_fn(waad=waad.float(), fai=fai.float(), mask=mask, entropies=entropies, config=cfg)  # [B, T]
        from rlattn.credit.advantages import apply_credit

        output["advantages"] = apply_credit(output["advantages"], gamma, sign=cfg.sign)  # [B, T]
        sel = {}
        if needs_stats:  # the token sets again, for the report (strategies return only gamma)
            from rlattn.credit.selection import select_tokens

            sel = select_tokens(waad.float(), fai.float(), mask, cfg)  # bool [B, T] each
        stats_time = time.perf_counter() - t0  # all credit overhead: statistics, gamma, report sets
        # the tensors behind this batch's credit, for inspection and tests
        self.last_credit = {"gamma": gamma, "waad": waad, "fai": fai, "mask": mask, "piggybacked": piggybacked, **sel}
        self._log_credit(mode, gamma, mask, sel, stats_time, cycle_start, piggybacked)
        self._maybe_write_samples(output, gamma, waad, fai, mask, sel, cfg, len(inputs))
        if latent_diag:
            from rlattn.backbones.diagnostics import log_latent_diagnostics

            log_latent_diagnostics(self, output, inputs, mode, attention=collector.result() if collector else None)
        return output

    # ---------------------------------------------------------------- helpers

    def _sampled_latents_of_last_generation(self, output):
        """The backbone's z̃ [B, K, D] of the batch just generated (latent noise on, training), else None."""
        policy = self.accelerator.unwrap_model(self.model)
        if not getattr(getattr(policy, "latent_config", None), "noise_std", 0.0) or not self.model.training:
            return None
        if self._trl_runs_old_logp_pass():
            raise ValueError("latent_noise needs TRL to skip its old-log-prob pass (num_iterations: 1, "
                             "steps_per_generation dividing gradient_accumulation_steps, no vLLM importance sampling)")
        zt = policy.last_sampled_latents
        if zt is None or zt.size(0) != output["completion_ids"].size(0):
            raise RuntimeError("latent noise is on but the last generate() call sampled no latents for this batch")
        return zt

    def _early_exit_stats(self, prompt_ids, prompt_mask, completion_ids, completion_mask, pixel_values=None,
                          collector=None, sampled_latents=None):
        ids = torch.cat([prompt_ids, completion_ids], 1)  # [B, P+T]
        am = torch.cat([prompt_mask, completion_mask], 1)  # [B, P+T]
        resp = torch.cat([torch.zeros_like(prompt_mask), completion_mask], 1).bool()  # [B, P+T]
        keep = resp.any(1)
        B, N = ids.shape
        waad = torch.zeros(B, N, device=ids.device)
        fai = torch.full((B, N), float("nan"), device=ids.device)
        if keep.any():
            bs = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
            rows = keep.nonzero().flatten()
            policy = self.accelerator.unwrap_model(self.model)
            with self.accelerator.autocast():
                for start in range(0, len(rows), max(1, bs)):
                    r = rows[start : start + bs]
                    fk = {} if pixel_values is None else {"pixel_values": pixel_values[r]}  # one image per row
                    observer = None if collector is None else collector.for_rows(r)
                    ctx = (contextlib.nullcontext() if sampled_latents is None
                           else policy.using_sampled_latents(sampled_latents[r]))
                    with ctx:  # the statistics of the latents the rollout actually read
                        s = compute_attention_stats(self.model, ids[r], am[r], resp[r], self.stats_config, observer=observer, **fk)
                    waad[r], fai[r] = s.waad, s.fai
        return waad, fai

    @torch.no_grad()
    def _policy_entropies(self, prompt_ids, prompt_mask, completion_ids, completion_mask):
        ids = torch.cat([prompt_ids, completion_ids], 1)
        am = torch.cat([prompt_mask, completion_mask], 1)
        bs = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        _, ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            self, self.model, ids, am, completion_ids.size(1), batch_size=bs, compute_entropy=True
        )
        return ent.float()  # [B, T]

    def _log_credit(self, mode, gamma, mask, sel, stats_time, cycle_start, piggybacked):
        from rlattn.credit.report import credit_report

        report = credit_report(gamma, mask, **sel)
        for name, value in report.to_metrics(prefix="credit/").items():
            self._metrics[mode][name].append(value)
        now = time.perf_counter()
        cycle = (now - self._last_cycle_start) if self._last_cycle_start is not None else (now - cycle_start)
        self._last_cycle_start = cycle_start
        self._metrics[mode]["credit/stats_time_s"].append(stats_time)
        # share of the wall time since the previous generation batch began (generation + optimisation)
        self._metrics[mode]["credit/stats_time_frac"].append(stats_time / max(cycle, 1e-9))
        self._metrics[mode]["credit/piggybacked"].append(float(piggybacked))

    def _maybe_write_samples(self, output, gamma, waad, fai, mask, sel, cfg, n_local):
        n = int(getattr(self.args, "credit_log_samples", 0) or 0)
        steps = max(1, int(self.args.logging_steps))  # a fractional logging_steps means every step here
        if n <= 0 or not self.model.training or self.state.global_step % steps != 0:
            return
        from rlattn.rollouts.records import append_records

        rank = self.accelerator.process_index
        lo = rank * n_local
        logs = self._logs
        tok = self.processing_class if hasattr(self.processing_class, "convert_ids_to_tokens") else self.processing_class.tokenizer
        total = n_local * self.accelerator.num_processes  # TRL's logs hold the gathered batch last
        records = []
        for i in range(min(n, n_local)):
            m = mask[i]
            ids = output["completion_ids"][i][m].tolist()
            g = lambda x: [None if (isinstance(v, float) and math.isnan(v)) else round(v, 6) for v in x[i][m].tolist()]  # noqa: E731
            prompt = _last(logs["prompt"], lo + i, total)
            records.append({
                "step": int(self.state.global_step),
                # images in multimodal prompts are written as a "<ClassName>" stand-in
                "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt, default=lambda o: f"<{type(o).__name__}>"),
                "completion": tok.decode(ids, skip_special_tokens=False),
                "completion_ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "rewards": {k: _last(v, lo + i, total) for k, v in logs["rewards"].items()},
                "advantage": _last(logs["advantages"], lo + i, total),
                "gamma": g(gamma), "waad": g(waad), "fai": g(fai),
                "preplan": sel["preplan"][i][m].tolist() if "preplan" in sel else None,
                "anchor": sel["anchor"][i][m].tolist() if "anchor" in sel else None,
                "strategy": cfg.strategy,
            })
        path = os.path.join(self.args.output_dir, f"rollouts{'' if rank == 0 else f'-rank{rank}'}.jsonl")
        append_records(path, records)


def _last(values, index, total):
    """Entry ``index`` of the last ``total`` items appended to a TRL log deque."""
    values = list(values)
    if len(values) < total:
        return None
    v = values[len(values) - total + index]
    return None if isinstance(v, float) and math.isnan(v) else v
