"""``AttnCreditGRPOTrainer``: TRL's GRPOTrainer with attention-credit token-level advantages.

Plain GRPO gives every token of a response its sequence's group-normalised advantage A. Here we
read WAAD and FAI off the policy's own attention on the rollout weights, turn them into per-token
weights γ with the configured strategy, and hand TRL (B, T) advantages Ã[t] = γ[t]·A
(docs/credit.md §7). TRL's loss accepts (B, T) advantages, so we never fork it.

Where the statistics come from (``credit/extra_forward`` is 0 or 1 per generation batch):

- **fused** (TRL's default layout: ``num_iterations`` 1 and ``steps_per_generation`` dividing
  ``gradient_accumulation_steps``): no optimizer step happens between generation and the loss
  forwards of the batch, so each micro-batch's loss forward runs on the rollout weights. The
  selected layers' q/k are captured in that forward (detached), γ is computed for the micro-batch
  and ``inputs["advantages"]`` becomes (B, T) before TRL reads it. With gradient checkpointing the
  recomputed forward runs outside the capture, so it is never read twice. No extra forward.
- **piggyback** (TRL runs its no-grad old-log-prob pass: ``num_iterations`` > 1, misaligned steps,
  vLLM importance sampling): the statistics are captured in that pass. No extra forward.
- **extra** (only where neither holds: dropout active in the training forward, so its q/k differ
  from the rollout policy's; ``credit_fused: false``; a subclass that turns fusion off): one pass
  through TRL's own chunked forward that stops after the last selected layer.

With ``share_prompt_prefix`` the fused and piggyback captures ride on the shared-prompt pass (each
prompt's prefix once per micro-batch, rlattn/shared_prompt.py): equal statistics up to round-off.

Every pass goes through TRL's ``_get_per_token_logps_and_entropies``, so it gets every model input
TRL gives the policy (pixel values, image sizes and grids, multi-image prompts, pixel attention
masks, token types), sliced per micro-batch by TRL's own code. Strategies declare what they need
(``rlattn.credit.strategy_needs``): ``identity`` (uniform) returns TRL's own (B,) advantages
untouched; strategies needing no pass (random) get γ at once; ``entropies`` (high_entropy) reads
the entropies TRL computes in the loss forward, or asks the old-log-prob pass for them.

Extension points for subclasses (plug-ins use them; the core never names a plug-in):
``extend_rollout_batch(output)`` adds per-row tensors that travel with the batch;
``credit_observer(output)`` returns a capture callback ``(rows, layer, q, k, scaling)`` that sees
the statistics pass; ``on_credit(output, inputs, mode, observer)`` runs after γ is set;
``_credit_forward(...)`` runs the extra pass; ``fuse_credit_into_loss`` (class attribute) allows
the fused path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from types import SimpleNamespace

import torch
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from rlattn.credit.attention_stats import StatsAccumulator, check_attention_features
from rlattn.credit.capture import StopForward, capture_qk, num_hidden_layers
from rlattn.credit.config import CreditConfig
from rlattn.credit.registry import get_credit_fn, strategy_needs
from rlattn.compact_head import compact_cpu_lm_head
from rlattn.dynamic_sampling import PromptStream, merge_rows, zero_variance_groups
from rlattn.shared_prompt import prompt_groups, regroup_by_prompt, shared_prompt_logps

logger = logging.getLogger(__name__)

# loss types whose math treats the advantage as a per-sequence quantity (docs/credit.md §7)
_SEQUENCE_ONLY_LOSSES = ("vespo", "luspo")
# what TRL's _compute_loss hands the policy besides ids and mask (grpo_trainer, TRL 1.16)
MODEL_INPUT_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                    "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


class _PassCapture:
    """Arms the next policy forward made through ``_get_per_token_logps_and_entropies``: with
    ``attention``, its selected layers' q/k feed a :class:`StatsAccumulator` (rows in TRL's chunk
    order), built from that call's own ids and masks; with ``want_entropy`` it keeps the entropies."""

    def __init__(self, attention: bool, want_entropy: bool, stop_early: bool, observer=None, on_done=None):
        self.attention = attention
        self.stats = None  # StatsAccumulator, once the pass runs
        self.want_entropy = want_entropy
        self.stop_early = stop_early
        self.observer = observer
        self.on_done = on_done
        self.entropies = None
        self.ran = False
        self.skip_if_inert = False  # armed before the completions exist (TRL's old-log-prob pass): check them then


class _EarlyExit:
    """Calls the policy and turns the capture's StopForward into a stub output for TRL's loop
    (log-probs and entropies of zeros that nobody reads)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids=None, **kwargs):
        try:
            return self.model(input_ids=input_ids, **kwargs)
        except StopForward:
            zeros = torch.zeros(input_ids.shape, device=input_ids.device)
            return SimpleNamespace(log_probs=zeros, entropy=zeros, aux_loss=None)


class _EpochSeededSampler(RepeatSampler):
    """TRL's RepeatSampler, shuffled from ``seed + epoch`` instead of one generator drawn epoch after
    epoch: a run resumed in a later epoch sees the data order an uninterrupted run sees (TRL's
    sampler restarts its generator on resume, so every resumed epoch repeated epoch 0's order)."""

    def __init__(self, *args, trainer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._trainer = trainer

    def __iter__(self):
        if self.shuffle:
            epoch = int(math.floor((self._trainer.state.epoch or 0.0) + 1e-6)) if self._trainer is not None else 0
            self.generator.manual_seed((self.seed if self.seed is not None else 0) + 1_000_003 * epoch)
        return super().__iter__()


def _nonempty(resp: torch.Tensor) -> torch.Tensor:
    """Give rows without response tokens their last position, so reductions stay finite.

    Such rows carry a zero loss mask (e.g. ``mask_truncated_completions``); their γ is discarded.
    """
    empty = ~resp.any(1)
    if empty.any():
        resp = resp.clone()
        resp[empty, -1] = True
    return resp


def _has_active_dropout(model) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


class AttnCreditGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages are reweighted per token by attention credit.

    Takes the same arguments as ``trl.GRPOTrainer``; ``args`` should be an
    :class:`rlattn.config.AttnCreditConfig` (a plain GRPOConfig means ``uniform`` credit).
    """

    #: whether the statistics may ride on the loss forward (see the module docstring)
    fuse_credit_into_loss = True

    def __init__(self, *args, **kwargs):
        targs = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if targs is not None and hasattr(targs, "credit_config"):
            self.credit_config = targs.credit_config()
            self.stats_config = targs.attention_stats_config()
        else:
            self.credit_config = CreditConfig(strategy="uniform")
            self.stats_config = None
        self.credit_fn = get_credit_fn(self.credit_config.strategy)
        self.credit_needs = strategy_needs(self.credit_config.strategy)
        if targs is not None and "identity" not in self.credit_needs:
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
        self._pass_capture: _PassCapture | None = None
        self.last_credit: dict | None = None
        self._last_cycle_start: float | None = None
        self._fused_batch: dict | None = None
        self._regrouped_buffer: list | None = None
        self._warned: set[str] = set()
        self._prompt_stream = None
        if targs is not None and getattr(targs, "dynamic_sampling", False):
            if self.accelerator.num_processes > 1:
                raise ValueError(f"dynamic_sampling=True runs on one process (this run has {self.accelerator.num_processes}): "
                                 "the extra generation rounds would have to be agreed across ranks. Set dynamic_sampling: false.")
            self._prompt_stream = PromptStream(self.train_dataset, seed=targs.seed + 1)
        self._credit_layers = None
        if self.stats_config is not None and "attention" in self.credit_needs:
            try:
                self._credit_layers = self.stats_config.resolve_layers(num_hidden_layers(self.model))
            except ValueError as e:  # name the YAML key, as AttnCreditConfig.attention_stats_config does
                raise ValueError(str(e).replace("AttentionStatsConfig.layers", "attn_layers")) from None
            check_attention_features(self.model, self._credit_layers, self._max_sequence_length)

    # ---------------------------------------------------------------- extension points

    def extend_rollout_batch(self, output: dict) -> None:
        """Add per-row tensors [B, ...] to a generation batch (TRL shuffles and splits them with it)."""

    def credit_observer(self, output: dict):
        """A capture callback ``(rows: slice, layer, q, k, scaling)`` to ride on the statistics pass, or None."""
        return None

    def on_credit(self, output: dict, inputs: list, mode: str, observer) -> None:
        """Called once per generation batch after its γ is known (not on the fused path)."""

    # ---------------------------------------------------------------- which path

    def _trl_runs_old_logp_pass(self) -> bool:
        """Mirror of TRL's condition for computing ``old_per_token_logps`` in the generation phase."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def credit_path(self) -> str:
        """``identity`` | ``direct`` (no pass) | ``piggyback`` | ``fused`` | ``extra`` for this configuration."""
        needs = self.credit_needs
        if "identity" in needs:
            return "identity"
        if not needs & {"attention", "entropies"}:
            return "direct"
        if self._trl_runs_old_logp_pass():
            return "piggyback"
        if self._fusion_allowed():
            return "fused"
        return "extra"

    def _fusion_allowed(self) -> bool:
        if not self.fuse_credit_into_loss or not getattr(self.args, "credit_fused", True):
            return False
        if _has_active_dropout(self.accelerator.unwrap_model(self.model)):
            self._warn_once("dropout", "rlattn: the policy has active dropout, so its training forward does not see the "
                            "rollout policy's attention; the statistics take one extra forward per batch instead of "
                            "riding on the loss forward (set lora_dropout: 0.0 to avoid it)")
            return False
        return True

    def _max_sequence_length(self) -> int | None:
        """Longest prompt of the training set (tokens) + max_completion_length, or None if unknown."""
        ds = getattr(self, "train_dataset", None)
        if ds is None or not hasattr(ds, "__len__") or "prompt" not in getattr(ds, "column_names", []):
            return None
        try:
            prompts = list(ds["prompt"])
            columns = ds.column_names
            if "images" in columns or "image" in columns:  # a VLM's prompt length includes its image tokens
                from trl.data_utils import prepare_multimodal_messages

                images = ds["images"] if "images" in columns else [None if im is None else [im] for im in ds["image"]]
                prompts = [prepare_multimodal_messages(p, images=im) if im else p for p, im in zip(prompts, images)]
            ids = self._tokenize_prompts(prompts)[0]
        except Exception:  # noqa: BLE001 - an unusual dataset: the runtime check in the capture still holds
            return None
        return max(map(len, ids)) + int(self.args.max_completion_length or 0)

    # ---------------------------------------------------------------- TRL hooks

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:  # an iterable dataset or a future TRL: leave it alone
            return sampler
        return _EpochSeededSampler(sampler.data_source, sampler.mini_repeat_count, batch_size=sampler.batch_size,
                                   repeat_count=sampler.repeat_count, shuffle=sampler.shuffle, seed=sampler.seed, trainer=self)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, *args, **kwargs):
        with compact_cpu_lm_head(getattr(self.args, "compact_lm_head", True)):  # rlattn/compact_head.py
            return self._logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                             compute_entropy, *args, **kwargs)

    def _logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                             *args, **kwargs):
        cap = self._pass_capture
        if cap is None and self._can_share_prompt(input_ids, logits_to_keep, args, kwargs):
            return self._shared_prompt_pass(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy)
        if cap is None:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                                              compute_entropy, *args, **kwargs)
        self._pass_capture = None  # one pass per capture: TRL's reference pass comes after it
        want = compute_entropy or cap.want_entropy
        if cap.attention and cap.skip_if_inert and self._inert_without_fai(attention_mask[:, -logits_to_keep:].bool()):
            cap.attention = False  # no completion is longer than H_lo: γ = 1 whatever the statistics, so capture nothing
        # a capture rides on the shared-prompt pass too (rlattn/shared_prompt.py), unless an observer wants whole rows
        share = cap.observer is None and not cap.stop_early and self._can_share_prompt(input_ids, logits_to_keep, args, kwargs)
        if not cap.attention:
            if share:
                out = self._shared_prompt_pass(model, input_ids, attention_mask, logits_to_keep, batch_size, want)
            else:
                out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                                                 want, *args, **kwargs)
        else:
            am = attention_mask.bool()  # [B, P+T]
            resp = am.clone()
            resp[:, : input_ids.size(1) - logits_to_keep] = False  # [B, P+T] completion columns only
            cap.stats = StatsAccumulator(self.stats_config, self._credit_layers, am, _nonempty(resp))
            callback = cap.stats.callback if cap.observer is None else cap.stats.callback_with(cap.observer)
            if share:
                live = [True]  # off during each prefix pass: its keys reach the rows' pass through the cache

                @contextlib.contextmanager
                def prefix_pass():
                    live[0] = False
                    try:
                        yield
                    finally:
                        live[0] = True

                unpack = [None]  # a packed rows' pass maps its q/k to the padded rows' (rlattn/shared_prompt.py)

                @contextlib.contextmanager
                def rows_pass(fn):
                    unpack[0] = fn
                    try:
                        yield
                    finally:
                        unpack[0] = None

                def rows_only(layer, q, k, scaling):
                    if live[0]:
                        if unpack[0] is not None:
                            q, k = unpack[0](q, k)
                        callback(layer, q, k, scaling)

                with capture_qk(model, self._credit_layers, rows_only, stop_after_last=False):
                    out = self._shared_prompt_pass(model, input_ids, attention_mask, logits_to_keep, batch_size, want,
                                                   prefix_context=prefix_pass, rows_context=rows_pass)
            else:
                with capture_qk(model, self._credit_layers, callback, stop_after_last=cap.stop_early):
                    out = super()._get_per_token_logps_and_entropies(
                        _EarlyExit(model) if cap.stop_early else model, input_ids, attention_mask, logits_to_keep, batch_size,
                        want, *args, **kwargs)
        logps, entropies, aux = out
        cap.entropies = None if entropies is None else entropies.detach()
        cap.ran = True
        if cap.on_done is not None:
            cap.on_done(cap)
        return logps, (entropies if compute_entropy else None), aux

    def _can_share_prompt(self, input_ids, logits_to_keep, args, kwargs) -> bool:
        """``share_prompt_prefix`` applies: text-only, no MoE aux loss, one process, no gradient
        checkpointing, a prompt of >= 2 columns (see rlattn/shared_prompt.py)."""
        return (self.args.share_prompt_prefix and not any(a is not None and a is not False for a in args)
                and not any(v is not None and v is not False for v in kwargs.values())
                and self.accelerator.num_processes == 1 and not self.args.gradient_checkpointing
                and input_ids.size(1) - logits_to_keep >= 2)

    def _shared_prompt_pass(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                            prefix_context=contextlib.nullcontext, rows_context=None):
        """TRL's chunked log-prob pass, each chunk with one prefix pass per distinct prompt; a chunk
        whose prompts are all distinct has nothing to share and runs TRL's whole-row pass."""
        batch_size = batch_size or input_ids.size(0)
        P = input_ids.size(1) - logits_to_keep
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, am = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            groups = prompt_groups(ids[:, :P], am[:, :P])  # [U], [b]
            if groups[0].numel() == ids.size(0):
                lp, ent, _ = super()._get_per_token_logps_and_entropies(model, ids, am, logits_to_keep, None, compute_entropy)
            else:
                lp, ent = shared_prompt_logps(model, ids, am, logits_to_keep, compute_entropy, self.accelerator.autocast,
                                              groups=groups, prefix_context=prefix_context,
                                              pack=getattr(self.args, "pack_completions", False), rows_context=rows_context)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        buffered = self._buffered_inputs
        if (not self.model.training or not getattr(self.args, "shuffle_by_prompt", False) or buffered is None
                or buffered is self._regrouped_buffer or buffered[0].get("pixel_values") is not None):
            return inputs  # evaluation, off, or a buffer already re-dealt (a later micro-batch); images: TRL's split
        # TRL just generated, shuffled rows and split them: re-deal the micro-batches by prompt group
        self._buffered_inputs = self._regrouped_buffer = regroup_by_prompt(buffered)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _compute_loss(self, model, inputs):
        fused = self._fused_batch
        if fused is not None and "credit_row" in inputs:  # γ of this micro-batch rides on its loss forward
            if fused["inert"]:
                self._finish_fused(inputs, None)  # γ = 1: nothing to capture
            else:
                self._pass_capture = self._new_capture(inputs, stop_early=False,
                                                       on_done=lambda cap: self._finish_fused(inputs, cap))
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._pass_capture = None

    def _generate_and_score_completions(self, inputs):
        cycle_start = time.perf_counter()
        path = self.credit_path()
        piggy = None
        if path == "piggyback":
            piggy = self._pass_capture = _PassCapture("attention" in self.credit_needs, "entropies" in self.credit_needs,
                                                      stop_early=False)
            piggy.skip_if_inert = True
        try:
            output = super()._generate_and_score_completions(inputs)
            if self._prompt_stream is not None and self.model.training:
                self._pass_capture = None  # each replacement batch gets a capture of its own
                output, inputs, _ = self._resample_zero_variance(output, inputs, piggy)
        finally:
            self._pass_capture = None
        self.extend_rollout_batch(output)
        if path == "identity":  # uniform: TRL's own (B,) advantages, metric-exact in every configuration
            return output
        mode = "train" if self.model.training else "eval"
        t0 = time.perf_counter()
        mask = self._credit_mask(output)  # [B, T]
        inert = "attention" in self.credit_needs and self._inert_without_fai(mask)
        if "attention" in self.credit_needs and self.accelerator.num_processes > 1:
            # FSDP / ZeRO-3 all-gather inside every forward: every rank must run the same passes
            runs = torch.tensor([0.0 if inert else 1.0], device=self.accelerator.device)
            inert = self.accelerator.reduce(runs, reduction="max").item() == 0
        if path == "fused" and mode == "train":
            B = mask.size(0)
            output["credit_row"] = torch.arange(B, device=mask.device)  # [B]: rows survive TRL's shuffle
            self._fused_batch = {"B": B, "T": mask.size(1), "inert": inert, "parts": {}, "mode": mode,
                                 "cycle_start": cycle_start, "n_local": len(inputs)}
            self._metrics[mode]["credit/extra_forward"].append(0.0)
            self._metrics[mode]["credit/piggybacked"].append(0.0)
            return output
        waad = fai = entropies = None
        observer = self.credit_observer(output)
        extra = 0.0
        if path == "piggyback" and piggy.ran:  # TRL's old-log-prob pass was captured
            if "_piggy_waad" in output or "_piggy_entropies" in output:  # rows merged by dynamic sampling
                waad, fai = output.pop("_piggy_waad", None), output.pop("_piggy_fai", None)
                entropies = output.pop("_piggy_entropies", None)
            else:
                if piggy.stats is not None:  # None: the batch was inert, nothing was captured
                    waad, fai = self._piggyback_stats(output, piggy)
                entropies = piggy.entropies
        elif path in ("piggyback", "fused", "extra") and not inert:
            extra = 1.0
            waad, fai, entropies = self._credit_forward(output, observer)
        self._finish_generation(output, inputs, mode, mask, waad, fai, entropies, inert, extra,
                                piggybacked=path == "piggyback" and piggy.ran, t0=t0, cycle_start=cycle_start,
                                observer=observer)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # [B, F]: dynamic sampling's zero-variance test
        return rewards_per_func

    def _summed_rewards(self) -> torch.Tensor:
        """[B]: the last scored batch's rewards, weighted and summed as TRL does (NaN: unscorable)."""
        per_func = self._last_rewards_per_func  # [B, F]
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        return rewards

    def _stash_piggy(self, batch: dict, cap: _PassCapture) -> bool:
        """Put a captured old-log-prob pass's statistics into ``batch`` as completion-aligned rows
        (``_piggy_waad`` / ``_piggy_fai`` / ``_piggy_entropies`` [B, T]) so dynamic sampling can
        merge them with the batch; False when the capture holds no statistics it was asked for."""
        if not cap.ran or (("attention" in self.credit_needs) and cap.stats is None):
            return False
        if cap.stats is not None:
            batch["_piggy_waad"], batch["_piggy_fai"] = self._piggyback_stats(batch, cap)
        if cap.entropies is not None:
            batch["_piggy_entropies"] = cap.entropies
        return True

    def _resample_zero_variance(self, output: dict, inputs: list, piggy: _PassCapture | None = None):
        """Dynamic sampling (rlattn/dynamic_sampling.py): swap groups without reward variance for
        groups of fresh prompts. With ``piggy`` (TRL's old-log-prob pass carries the statistics),
        each replacement batch's pass is captured too and its rows merged, so no extra pass runs.
        Returns (output, inputs, groups replaced)."""
        G, metrics = self.num_generations, self._metrics["train"]
        zero = zero_variance_groups(self._summed_rewards(), G)  # [B / G]
        before = zero.float().mean().item()
        inputs, dropped, extra_groups, rounds = list(inputs), 0, 0, 0
        stashed = piggy is not None and bool(zero.any()) and self._stash_piggy(output, piggy)
        for round_ in range(self.args.dynamic_sampling_max_rounds):
            todo = zero.nonzero().flatten()  # [Z] group indices still without variance
            if todo.numel() == 0:
                break
            rows = self._prompt_stream.take(todo.numel(), self.state.global_step, round_)
            kept = {k: len(v) for k, v in metrics.items()}
            cap = None
            if piggy is not None:
                cap = self._pass_capture = _PassCapture("attention" in self.credit_needs, piggy.want_entropy, stop_early=False)
                cap.skip_if_inert = True
            try:
                extra = super()._generate_and_score_completions([row for row in rows for _ in range(G)])
            finally:
                self._pass_capture = None
            if stashed and not self._stash_piggy(extra, cap):  # an inert replacement batch: no rows to merge
                for key in [k for k in output if k.startswith("_piggy_")]:
                    del output[key]
                stashed = False
            for k in list(metrics):  # TRL's reward metrics keep describing the original draw
                if k in kept:
                    del metrics[k][kept[k]:]
                else:
                    del metrics[k]
            rounds, extra_groups = rounds + 1, extra_groups + len(rows)
            src = (~zero_variance_groups(self._summed_rewards(), G)).nonzero().flatten()  # [S] usable groups
            fill = todo[: src.numel()]
            src = src[: fill.numel()]
            if piggy is not None and not stashed:
                for key in [k for k in extra if k.startswith("_piggy_")]:
                    del extra[key]
            if fill.numel():
                offs = torch.arange(G, device=fill.device)
                base_rows, extra_rows = (fill[:, None] * G + offs).flatten(), (src.to(fill.device)[:, None] * G + offs).flatten()
                output = merge_rows(output, extra, base_rows, extra_rows, self._tokenizer.pad_token_id)
                for g, e in zip(fill.tolist(), src.tolist()):
                    inputs[g * G:(g + 1) * G] = [rows[e]] * G
                zero[fill] = False
                dropped += fill.numel()
        if piggy is not None and dropped and not stashed:  # no captured rows to merge: one extra pass instead
            piggy.ran, piggy.stats, piggy.entropies = False, None, None
        for key, value in (("zero_std_before", before), ("zero_std_after", zero.float().mean().item()),
                           ("dropped_groups", float(dropped)), ("extra_groups", float(extra_groups)), ("rounds", float(rounds))):
            metrics[f"dynamic_sampling/{key}"].append(value)
        return output, inputs, dropped

    # ---------------------------------------------------------------- passes

    def _new_capture(self, batch, stop_early: bool, on_done=None, observer=None) -> _PassCapture:
        return _PassCapture("attention" in self.credit_needs, "entropies" in self.credit_needs, stop_early,
                            observer=observer, on_done=on_done)

    @staticmethod
    def _piggyback_stats(output, piggy):
        """WAAD/FAI [B, T] from TRL's captured old-log-prob pass."""
        stats = piggy.stats.result()
        P = output["prompt_ids"].size(1)
        return stats.waad[:, P:], stats.fai[:, P:]  # [B, T]

    def _credit_forward(self, output, observer=None, batch_size=None):
        """The extra pass: WAAD and FAI [B, T] (None if not needed) and entropies [B, T] (None if not
        needed) of the rollout policy on the generation batch, through TRL's chunked forward with every
        model input the loss forward gets. Stops after the last selected layer unless entropies are needed."""
        want_entropy = "entropies" in self.credit_needs
        cap = self._new_capture(output, stop_early=not want_entropy, observer=observer)
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)  # [B, P+T]
        am = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)  # [B, P+T]
        if batch_size is None:
            batch_size = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        was_training = self.model.training
        self.model.eval()
        self._pass_capture = cap
        try:
            with torch.no_grad():
                self._get_per_token_logps_and_entropies(self.model, ids, am, output["completion_ids"].size(1),
                                                        batch_size=batch_size, compute_entropy=want_entropy,
                                                        **self._model_inputs(output))
        finally:
            self._pass_capture = None
            self.model.train(was_training)
        waad = fai = None
        if cap.stats is not None:
            stats = cap.stats.result()
            P = output["prompt_ids"].size(1)
            waad, fai = stats.waad[:, P:], stats.fai[:, P:]  # [B, T]
        return waad, fai, cap.entropies

    def _early_exit_stats(self, prompt_ids, prompt_mask, completion_ids, completion_mask, model_inputs=None):
        """WAAD and FAI [B, P+T] of the current policy by the extra pass (a reference for tests and benches)."""
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                 "completion_mask": completion_mask, **(model_inputs or {})}
        needs, self.credit_needs = self.credit_needs, frozenset({"attention"})
        try:
            waad, fai, _ = self._credit_forward(batch, batch_size=self.args.per_device_train_batch_size)  # [B, T]
        finally:
            self.credit_needs = needs
        B, P = prompt_ids.shape
        pad = lambda x, v: torch.cat([torch.full((B, P), v, dtype=x.dtype, device=x.device), x], 1)  # noqa: E731
        return pad(waad, 0.0), pad(fai, float("nan"))  # [B, P+T]

    @staticmethod
    def _model_inputs(batch: dict) -> dict:
        return {k: batch[k] for k in MODEL_INPUT_KEYS if batch.get(k) is not None}

    @staticmethod
    def _credit_mask(batch: dict) -> torch.Tensor:
        mask = batch["completion_mask"].bool()  # [B, T]
        if "tool_mask" in batch:
            mask = mask & batch["tool_mask"].bool()
        return mask

    def _inert_without_fai(self, mask: torch.Tensor) -> bool:
        """True when no response is longer than H_lo (FAI undefined on every token) and the strategy
        then leaves γ = 1 whatever WAAD is: the statistics pass cannot change γ."""
        h_lo = self.stats_config.fai_horizon[0]
        if int(mask.sum(1).max()) > h_lo:
            return False
        nan = torch.full(mask.shape, float("nan"))
        cpu_mask = mask.cpu()
        for probe in (torch.zeros(mask.shape), torch.arange(mask.numel(), dtype=torch.float32).view(mask.shape) % 7):
            gamma = self.credit_fn(waad=probe, fai=nan, mask=cpu_mask, entropies=None, config=self.credit_config)
            if not torch.equal(gamma[cpu_mask], torch.ones_like(gamma[cpu_mask])):
                return False
        self._warn_once("inert", (
            f"rlattn: credit_strategy={self.credit_config.strategy!r} cannot act on this batch: no completion is longer "
            f"than attn_fai_horizon[0]={h_lo} tokens (longest: {int(mask.sum(1).max())}), so FAI is undefined on every "
            "token, no token is an anchor and γ = 1 everywhere; the statistics pass is skipped. Fix: a shorter horizon "
            f"for short completions (e.g. attn_fai_horizon: [1, {self.stats_config.fai_horizon[1]}]) or a longer "
            "max_completion_length. Counted in credit/inert."))
        return True

    # ---------------------------------------------------------------- γ

    def _gamma(self, waad, fai, mask, entropies):
        cfg = self.credit_config
        if "reseed" in self.credit_needs:  # a fresh draw per batch, reproducible from (seed, step)
            cfg = dataclasses.replace(cfg, seed=cfg.seed * 1_000_003 + int(self.state.global_step) * 7919 + self.accelerator.process_index)
        if waad is None:
            waad = torch.zeros(mask.shape, device=mask.device)
            fai = torch.full(mask.shape, float("nan"), device=mask.device)
        ent = None if entropies is None else entropies.float()
        gamma = self.credit_fn(waad=waad.float(), fai=fai.float(), mask=mask, entropies=ent, config=cfg)  # [B, T]
        sel = {}
        if "attention" in self.credit_needs:  # the token sets again, for the report (strategies return only γ)
            from rlattn.credit.selection import select_tokens

            sel = select_tokens(waad.float(), fai.float(), mask, cfg)  # bool [B, T] each
        return gamma, waad, fai, sel, cfg

    def _finish_generation(self, output, inputs, mode, mask, waad, fai, entropies, inert, extra, piggybacked, t0,
                           cycle_start, observer):
        from rlattn.credit.advantages import apply_credit

        if inert:
            waad = fai = None
        gamma, waad, fai, sel, cfg = self._gamma(waad, fai, mask, entropies)
        output["advantages"] = apply_credit(output["advantages"], gamma, sign=cfg.sign)  # [B, T]
        stats_time = time.perf_counter() - t0  # all credit overhead: statistics, γ, report sets
        self.last_credit = {"gamma": gamma, "waad": waad, "fai": fai, "mask": mask, "piggybacked": piggybacked,
                            "path": "piggyback" if piggybacked else ("extra" if extra else self.credit_path()), **sel}
        self._log_credit(mode, gamma, mask, sel, stats_time, cycle_start, piggybacked, extra, inert)
        rows = torch.arange(mask.size(0))
        self._maybe_write_samples(output, rows, gamma, waad, fai, mask, sel, cfg, len(inputs))
        self.on_credit(output, inputs, mode, observer)

    def _finish_fused(self, inputs, cap):
        """γ for one micro-batch from its own loss forward; ``inputs["advantages"]`` becomes (B, T)."""
        from rlattn.credit.advantages import apply_credit

        t0 = time.perf_counter()
        fused = self._fused_batch
        mask = self._credit_mask(inputs)  # [b, T]
        waad = fai = entropies = None
        if cap is not None:
            if cap.stats is not None:
                stats = cap.stats.result()
                P = inputs["prompt_ids"].size(1)
                waad, fai = stats.waad[:, P:], stats.fai[:, P:]  # [b, T]
            entropies = cap.entropies
        gamma, waad, fai, sel, cfg = self._gamma(waad, fai, mask, entropies)
        inputs["advantages"] = apply_credit(inputs["advantages"], gamma, sign=cfg.sign)  # [b, T]
        rows = inputs.pop("credit_row").cpu()  # done: a later pass over this micro-batch reuses its advantages
        parts = fused["parts"]
        for key, value in (("gamma", gamma), ("waad", waad), ("fai", fai), ("mask", mask), *sel.items()):
            parts.setdefault(key, []).append((rows, value.detach()))
        stats_time = time.perf_counter() - t0 + (cap.stats.reduce_time if cap is not None and cap.stats is not None else 0.0)
        mode = fused["mode"]
        self._log_credit(mode, gamma, mask, sel, stats_time, fused["cycle_start"], False, None, fused["inert"], time_it=False)
        self._maybe_write_samples(inputs, rows, gamma, waad, fai, mask, sel, cfg, fused["n_local"])
        fused["time"] = fused.get("time", 0.0) + stats_time
        done = sum(len(r) for r, _ in parts["gamma"])
        if done >= fused["B"]:  # the whole generation batch has been seen: assemble it in generation order
            # the batch's credit time, as a share of the time from its generation to its last loss forward
            self._metrics[mode]["credit/stats_time_s"].append(fused["time"])
            self._metrics[mode]["credit/stats_time_frac"].append(
                fused["time"] / max(time.perf_counter() - fused["cycle_start"], 1e-9))
            self._last_cycle_start = fused["cycle_start"]
            full = {}
            for key, pieces in parts.items():
                first = pieces[0][1]
                buf = torch.empty((fused["B"], *first.shape[1:]), dtype=first.dtype, device=first.device)
                for r, v in pieces:
                    buf[r.to(buf.device)] = v
                full[key] = buf
            self.last_credit = {**full, "piggybacked": False, "path": "fused"}

    # ---------------------------------------------------------------- logging

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _log_credit(self, mode, gamma, mask, sel, stats_time, cycle_start, piggybacked, extra, inert, time_it=True):
        from rlattn.credit.report import credit_report

        report = credit_report(gamma, mask, **sel)
        for name, value in report.to_metrics(prefix="credit/").items():
            self._metrics[mode][name].append(value)
        now = time.perf_counter()
        cycle = (now - self._last_cycle_start) if self._last_cycle_start is not None else (now - cycle_start)
        if extra is not None:  # once per generation batch
            self._last_cycle_start = cycle_start
            self._metrics[mode]["credit/extra_forward"].append(float(extra))
            self._metrics[mode]["credit/piggybacked"].append(float(piggybacked))
        if time_it:
            self._metrics[mode]["credit/stats_time_s"].append(stats_time)
            # share of the wall time since the previous generation batch began (generation + optimisation)
            self._metrics[mode]["credit/stats_time_frac"].append(stats_time / max(cycle, 1e-9))
        if bool(mask.any()) and bool((gamma[mask] == 1).all()) and not inert:
            self._warn_once("inert_batch", f"rlattn: credit_strategy={self.credit_config.strategy!r} left γ = 1 on every "
                            "response token of a batch (no token selected); counted in credit/inert")
            inert = True
        self._metrics[mode]["credit/inert"].append(float(inert))

    def _maybe_write_samples(self, batch, rows, gamma, waad, fai, mask, sel, cfg, n_local):
        """Append up to ``credit_log_samples`` records of the generation batch's first rows to rollouts.jsonl."""
        n = int(getattr(self.args, "credit_log_samples", 0) or 0)
        steps = max(1, int(self.args.logging_steps))  # a fractional logging_steps means every step here
        if n <= 0 or not self.model.training or self.state.global_step % steps != 0:
            return
        from rlattn.rollouts.records import append_records, records_path

        rank = self.accelerator.process_index
        lo = rank * n_local
        logs = self._logs
        tok = self.processing_class if hasattr(self.processing_class, "convert_ids_to_tokens") else self.processing_class.tokenizer
        total = n_local * self.accelerator.num_processes  # TRL's logs hold the gathered batch last
        records = []
        for i, row in enumerate(rows.tolist()):
            if row >= min(n, n_local):
                continue
            m = mask[i]
            ids = batch["completion_ids"][i][m].tolist()
            g = lambda x: [None if (isinstance(v, float) and math.isnan(v)) else round(v, 6) for v in x[i][m].tolist()]  # noqa: E731
            prompt = _last(logs["prompt"], lo + row, total)
            records.append({
                "step": int(self.state.global_step),
                # images in multimodal prompts are written as a "<ClassName>" stand-in
                "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt, default=lambda o: f"<{type(o).__name__}>"),
                "completion": tok.decode(ids, skip_special_tokens=False),
                "completion_ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "rewards": {k: _last(v, lo + row, total) for k, v in logs["rewards"].items()},
                "advantage": _last(logs["advantages"], lo + row, total),
                "gamma": g(gamma), "waad": g(waad), "fai": g(fai),
                "preplan": sel["preplan"][i][m].tolist() if "preplan" in sel else None,
                "anchor": sel["anchor"][i][m].tolist() if "anchor" in sel else None,
                "strategy": cfg.strategy,
            })
        if records:  # the same path rlattn.runs cuts back on resume
            append_records(records_path(self.args.output_dir, rank), records)


def _last(values, index, total):
    """Entry ``index`` of the last ``total`` items appended to a TRL log deque."""
    values = list(values)
    if len(values) < total:
        return None
    v = values[len(values) - total + index]
    return None if isinstance(v, float) and math.isnan(v) else v
