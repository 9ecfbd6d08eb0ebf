"""``AttnCreditPPOTrainer``: PPO with a learned critic, on the GRPO trainer's machinery, with
attention credit on the GAE advantages.

TRL removed its PPOTrainer (PR #7020). This one reuses, unchanged, everything of the GRPO trainer:
generation and rollout backends, reward scoring, the clipped policy loss (``loss_type``,
``epsilon``), PPO epochs (``num_iterations``; TRL then computes the old log-probs) and minibatches
(``steps_per_generation``), gradient accumulation, logging, and the attention-credit paths (fused,
piggyback, extra). What it adds:

- a critic (:class:`~rlattn.ppo.critic.Critic`): a value head on a second LoRA adapter over the
  policy's frozen base, or on a separate model;
- per generation batch (``extend_rollout_batch``, before credit): the sequence rewards TRL computed
  (its reward functions and weights) at each completion's last token, minus ``beta``·KL(π_old ‖
  π_ref) per token when ``beta`` > 0 (the reference is the base with the adapter off, or TRL's
  reference copy), the rollout critic's values V(s_t), GAE advantages A_t and returns G_t
  (:mod:`rlattn.ppo.gae`), optionally whitened over the batch's valid tokens. TRL's group
  advantages are replaced by A [B, T];
- credit: the core trainer then sets Ã_t = γ_t·A_t (``credit_sign`` acts per token), γ from the
  rollout weights, detached; ``credit_strategy: uniform`` is plain PPO;
- the loss: TRL's clipped policy loss on Ã plus ``vf_coef`` × the clipped value loss
  ½·max((V − G)², (V_old + clip(V − V_old, ±cliprange_value) − G)²), a masked mean over the
  micro-batch's valid tokens, scaled for gradient accumulation like TRL's own terms. The value
  loss is back-propagated first (``split_value_backward``), so the critic's graph is gone before
  the policy's forward: peak memory is one graph's, not two.

Metrics: ``ppo/value_loss``, ``ppo/vf_clipfrac``, ``ppo/explained_variance``, ``ppo/value_mean``,
``ppo/return_mean``, ``ppo/advantage_mean`` (before whitening), ``ppo/kl`` (when ``beta`` > 0), next
to TRL's clip ratios and the ``credit/*`` metrics. Checkpoints hold the critic's weights in
``critic.safetensors`` (its optimizer state is in TRL's), and resume restores them.
"""

from __future__ import annotations

import copy
import os
import shutil

import torch

from rlattn.trainer import AttnCreditGRPOTrainer

from .critic import CRITIC_ADAPTER, Critic
from .gae import gae, masked_whiten, token_rewards

__all__ = ["AttnCreditPPOTrainer"]

CRITIC_FILE = "critic.safetensors"


class AttnCreditPPOTrainer(AttnCreditGRPOTrainer):
    """PPO on TRL's GRPO machinery. Arguments as ``AttnCreditGRPOTrainer``; ``args`` is an
    :class:`~rlattn.ppo.config.AttnCreditPPOConfig`. ``critic_model``: an already loaded separate
    critic (else ``args.critic_model_name_or_path`` is loaded, else the LoRA critic is built)."""

    def __init__(self, *args, critic_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.args
        # beta is PPO's KL penalty in the rewards: TRL must neither add its KL loss term nor compute
        # its own reference log-probs (we do, once per batch); its reference model (if any) is kept.
        self.kl_coef, self.beta = float(self.beta), 0.0
        policy = self.accelerator.unwrap_model(self.model)
        if critic_model is None and cfg.critic_model_name_or_path:
            from rlattn.models import load_model_and_tokenizer

            critic_model = load_model_and_tokenizer(cfg.critic_model_name_or_path, dtype="float32", eval_mode=False).model
        if critic_model is None and cfg.gradient_checkpointing:
            raise ValueError("gradient_checkpointing=True recomputes the critic's forward during backward, after the switch "
                             "back to the policy adapter, which would give the LoRA critic wrong gradients; set "
                             "gradient_checkpointing: false (or use critic_model_name_or_path)")
        peft_config = None
        if critic_model is None:
            if not hasattr(policy, "peft_config"):
                raise ValueError("the default critic is a second LoRA adapter and needs use_peft: true; for full "
                                 "fine-tuning set critic_model_name_or_path")
            peft_config = copy.deepcopy(policy.peft_config["default"])
        self.critic = Critic(policy, peft_config, critic_model)
        self._rewards_per_func = None
        # The critic's forward runs outside DDP's forward (the wrapped forward is the policy's), which DDP's
        # reducer cannot track ("marked ready twice"): DDP ignores the critic's parameters and
        # training_step averages their gradients across processes itself.
        policy._ddp_params_and_buffers_to_ignore = [name for name, _ in self.critic.named_parameters()]
        if self.accelerator.num_processes > 1 and self.accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
            raise ValueError(f"PPO's critic runs outside the wrapped forward, which {self.accelerator.distributed_type.name} "
                             "cannot shard; use DDP (multi-GPU or 2 CPU processes) for PPO")

    # ---------------------------------------------------------------- rollouts: rewards, values, GAE

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # [N_all, F], gathered over processes
        return rewards_per_func

    def _sequence_rewards(self, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rewards [B] (TRL's weighted sum) and which rows every reward failed on [B]."""
        rpf = self._rewards_per_func.to(device)
        unscorable = torch.isnan(rpf).all(1)
        rewards = (rpf * self.reward_weights.to(device).unsqueeze(0)).nansum(1)
        rows = slice(self.accelerator.process_index * B, (self.accelerator.process_index + 1) * B)
        return torch.where(unscorable, 0.0, rewards)[rows], unscorable[rows]

    @torch.no_grad()
    def _logps(self, ids, am, T, reference: bool, batch):
        kw = self._model_inputs(batch)
        bs = self.args.per_device_train_batch_size
        if reference and self.ref_model is not None:
            return self._get_per_token_logps_and_entropies(self.ref_model, ids, am, T, batch_size=bs, **kw)[0]
        if reference:
            from trl.trainer.utils import use_adapter

            with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):  # the base: adapters off
                return self._get_per_token_logps_and_entropies(self.model, ids, am, T, batch_size=bs, **kw)[0]
        return self._get_per_token_logps_and_entropies(self.model, ids, am, T, batch_size=bs, **kw)[0]

    def extend_rollout_batch(self, output):
        super().extend_rollout_batch(output)
        mode = "train" if self.model.training else "eval"
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)  # [B, P+T]
        am = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)  # [B, P+T]
        B, T = output["completion_ids"].shape
        mask = output["completion_mask"].bool()  # [B, T]
        rewards, unscorable = self._sequence_rewards(B, ids.device)  # [B]
        with torch.no_grad(), self.accelerator.autocast():
            values = self.critic.values(ids, am, T).float() * mask  # [B, T] V(s_t) of the rollout critic
        kl = None
        if self.kl_coef:
            old = output.get("old_per_token_logps")
            old = self._logps(ids, am, T, reference=False, batch=output) if old is None else old
            kl = (old - self._logps(ids, am, T, reference=True, batch=output)).float()  # [B, T]
            self._metrics[mode]["ppo/kl"].append(float((kl * mask).sum() / mask.sum().clamp(min=1)))
        advantages, returns = gae(token_rewards(rewards, mask, kl, self.kl_coef), values, mask,
                                  gamma=self.args.ppo_gamma, lam=self.args.ppo_lambda)  # [B, T] each
        advantages = torch.where(unscorable[:, None], 0.0, advantages)  # no signal from unscorable rows
        n = mask.sum().clamp(min=1)
        m = self._metrics[mode]
        m["ppo/value_mean"].append(float(values.sum() / n))
        m["ppo/return_mean"].append(float((returns * mask).sum() / n))
        m["ppo/advantage_mean"].append(float((advantages * mask).sum() / n))
        var_ret = returns[mask].float().var(unbiased=False) if mask.sum() > 1 else torch.tensor(0.0)
        resid = (returns - values)[mask].float().var(unbiased=False) if mask.sum() > 1 else torch.tensor(0.0)
        m["ppo/explained_variance"].append(float(1.0 - resid / var_ret) if var_ret > 0 else float("nan"))
        if self.args.ppo_whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        output["advantages"] = advantages  # [B, T]: credit (γ·A) is applied on these
        output["ppo_values"] = values  # [B, T] the value-clip anchor
        output["ppo_returns"] = returns  # [B, T] the value targets

    # ---------------------------------------------------------------- loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.accelerator.num_processes > 1 and not getattr(self, "_critic_broadcast", False):
            import torch.distributed as dist

            for _, p in self.critic.named_parameters():  # DDP broadcasts rank 0's weights, but not ignored ones
                dist.broadcast(p.data, src=0)
            self._critic_broadcast = True
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            import torch.distributed as dist

            for _, p in self.critic.named_parameters():  # DDP ignores these: average their gradients here
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.accelerator.num_processes)
        return loss

    #: Back-propagate the value loss inside ``_compute_loss``, before the policy's forward: the
    #: critic's graph (a second pass through every layer) is freed before the policy's is built, so
    #: peak memory is the larger of the two graphs, not their sum. The returned loss carries the
    #: critic's gradient as a linear term (value: 0), so the Trainer's scaling and backward give the
    #: critic exactly the gradient of the summed loss (tested). Off with gradient checkpointing
    #: (``autograd.grad`` is not allowed through re-entrant checkpoints) and outside training.
    split_value_backward: bool = True

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        value_term = self.args.vf_coef * self._value_loss(inputs, mode) / normalizer  # the critic's pass first
        if (self.split_value_backward and mode == "train" and value_term.requires_grad
                and not self.args.gradient_checkpointing):
            params = [p for _, p in self.critic.named_parameters() if p.requires_grad]
            grads = torch.autograd.grad(value_term, params, allow_unused=True)  # frees the critic's graph now
            linear = sum((p * g).sum() for p, g in zip(params, grads) if g is not None)  # d/dp = g
            value_term = value_term.detach() + (linear - linear.detach())  # same value, same critic gradient
        loss = super()._compute_loss(model, inputs)  # TRL's clipped policy loss on γ·A (fused credit included)
        return loss + value_term

    def _value_loss(self, inputs, mode: str) -> torch.Tensor:
        """½·max((V − G)², (V_clipped − G)²), masked mean over the micro-batch's valid tokens (graph to the critic)."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        T = inputs["completion_ids"].size(1)
        mask = inputs["completion_mask"].float()  # [b, T]
        with self.accelerator.autocast():
            v = self.critic.values(ids, am, T)  # [b, T], with gradients to the critic only
        old_v, ret = inputs["ppo_values"].float(), inputs["ppo_returns"].float()
        loss_unclipped = (v - ret) ** 2
        if self.args.cliprange_value > 0:
            c = self.args.cliprange_value
            v_clipped = old_v + (v - old_v).clamp(-c, c)
            per_token = 0.5 * torch.maximum(loss_unclipped, (v_clipped - ret) ** 2)  # [b, T]
            clipped = ((v - old_v).abs() > c).float()
            self._metrics[mode]["ppo/vf_clipfrac"].append(float((clipped * mask).sum() / mask.sum().clamp(min=1)))
        else:
            per_token = 0.5 * loss_unclipped
        value_loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
        self._metrics[mode]["ppo/value_loss"].append(float(value_loss.detach()))
        return value_loss

    # ---------------------------------------------------------------- rollouts: the policy's weights alone

    def policy_weights_only(self):
        """Context in which the policy model has no critic submodules: rollout engines copy its weights
        (``rollout_merge_lora``, vLLM's merged hand-over) inside it."""
        return self.critic.detached_from(self.model)

    # ---------------------------------------------------------------- checkpoints

    def _save(self, output_dir=None, state_dict=None):
        from safetensors.torch import save_file

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        with self.critic.detached_from(self.model):  # the policy's files hold the policy alone
            super()._save(output_dir, state_dict=None if state_dict is None else
                          {k: v for k, v in state_dict.items() if "rlattn_value_head" not in k and "rlattn_critic" not in k})
        os.makedirs(output_dir, exist_ok=True)
        # PEFT writes every adapter, the critic's into critic/; with such a subfolder present the Trainer's
        # resume would load the subfolders only and skip the policy adapter. The critic lives in critic.safetensors.
        shutil.rmtree(os.path.join(output_dir, CRITIC_ADAPTER), ignore_errors=True)
        save_file(self.critic.state_dict(), os.path.join(output_dir, CRITIC_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_file

        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        path = os.path.join(resume_from_checkpoint, CRITIC_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{resume_from_checkpoint} has no {CRITIC_FILE}: it was not written by the PPO trainer "
                                    "(or its save was cut short); resume from another checkpoint")
        self.critic.load_state_dict(load_file(path))
