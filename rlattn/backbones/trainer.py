"""``LatentCreditGRPOTrainer``: the core trainer with the cocova_lite backbone's hooks.

Everything backbone-specific about training lives here, on the core trainer's documented
extension points (rlattn.trainer): sampled latents travel with the batch
(``extend_rollout_batch``), the statistics pass and the loss pass re-read them, the latent noise's
log-density rides on the first completion token, and the typed latent/image diagnostics ride
along on the statistics pass (``credit_observer``) and are logged after γ (``on_credit``). The
statistics never ride on the loss forward here (``fuse_credit_into_loss = False``): the
diagnostics read the generation batch as a whole.
"""

from __future__ import annotations

import torch

from rlattn.trainer import AttnCreditGRPOTrainer

from .config import BackboneArguments


class LatentCreditGRPOTrainer(AttnCreditGRPOTrainer):
    """AttnCreditGRPOTrainer for a :class:`~rlattn.backbones.LatentPolicy`; ``backbone_args`` are the
    recipe's :class:`BackboneArguments` (defaults when omitted)."""

    fuse_credit_into_loss = False

    def __init__(self, *args, backbone_args: BackboneArguments | None = None, **kwargs):
        self.backbone_args = backbone_args or BackboneArguments(backbone="cocova_lite")
        self._pass_latents: torch.Tensor | None = None
        self._collector = None
        super().__init__(*args, **kwargs)

    # ---------------------------------------------------------------- latent noise

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        zt = self._pass_latents
        if zt is None or model is not self.model:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        policy = self.accelerator.unwrap_model(self.model)
        rows = input_ids.size(0)
        batch_size = kwargs.get("batch_size") or (args[0] if args else None)
        if zt.size(0) != rows or (batch_size or rows) < rows:
            raise RuntimeError(f"latent noise: {zt.size(0)} sampled latents for a pass over {rows} rows in chunks of "
                               f"{batch_size}; the pass must see the whole batch at once")
        with policy.using_sampled_latents(zt):
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        if policy.last_latent_logp is None:
            raise RuntimeError("latent noise: the pass inserted no latents (no <bot> <lat>×K in the prompts?)")
        # log π(y, z̃ | x) = log N(z̃; z_θ(x), σ²) + Σ_t log π(y_t | x, z̃, y_<t): the density rides on token 0
        logps = torch.cat([logps[:, :1] + policy.last_latent_logp[:, None].to(logps.dtype), logps[:, 1:]], 1)
        return logps, entropies, aux

    def _compute_loss(self, model, inputs):
        self._pass_latents = inputs.get("sampled_latents")  # [B, K, D] with latent noise, else None
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._pass_latents = None

    def extend_rollout_batch(self, output):
        """The rollouts' z̃ [B, K, D] (latent noise on, training), shuffled and split with the batch."""
        policy = self.accelerator.unwrap_model(self.model)
        if not getattr(getattr(policy, "latent_config", None), "noise_std", 0.0) or not self.model.training:
            return
        if self._trl_runs_old_logp_pass():
            raise ValueError("latent_noise needs TRL to skip its old-log-prob pass (num_iterations: 1, "
                             "steps_per_generation dividing gradient_accumulation_steps, no vLLM importance sampling)")
        zt = policy.last_sampled_latents
        if zt is None or zt.size(0) != output["completion_ids"].size(0):
            raise RuntimeError("latent noise is on but the last generate() call sampled no latents for this batch")
        output["sampled_latents"] = zt

    def _credit_forward(self, output, observer=None, batch_size=None):
        zt = output.get("sampled_latents")
        if zt is None:
            return super()._credit_forward(output, observer, batch_size)
        self._pass_latents = zt  # the statistics of the latents the rollout actually read
        try:
            return super()._credit_forward(output, observer, batch_size=zt.size(0))
        finally:
            self._pass_latents = None

    # ---------------------------------------------------------------- diagnostics

    def credit_observer(self, output):
        self._collector = None
        if not self.backbone_args.latent_diagnostics or "attention" not in self.credit_needs:
            return None
        from .diagnostics import CompletionAttention

        P = output["prompt_ids"].size(1)
        am = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
        collector = CompletionAttention(am, P, self.accelerator.unwrap_model(self.model).latent_config.num_sinks)
        self._collector = collector
        return lambda rows, layer, q, k, scaling: collector.for_rows(rows)(layer, q, k, scaling)

    def on_credit(self, output, inputs, mode, observer):
        if not self.backbone_args.latent_diagnostics:
            return
        from .diagnostics import log_latent_diagnostics

        collector, self._collector = self._collector, None
        log_latent_diagnostics(self, output, inputs, mode, attention=collector.result() if collector else None)
