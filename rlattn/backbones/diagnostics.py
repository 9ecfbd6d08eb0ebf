"""Typed attention credit for latent and image positions (cocova-lite.md §2.4).

Why: attention credit picks preplan/anchor tokens among *completion* tokens only, so latent and
image positions are never called text anchors. What they earn is reported separately here, from
the completion's attention to them (chosen layers, heads averaged, sinks dropped; the same
:mod:`rlattn.credit.aggregation` code the TokenSelector uses):

- ``a[b, t, n]``: attention of completion row t to column n;
- attention mass per type: ``Σ_{n of type} a[b, t, n]`` averaged over completion rows;
- latent credit ``s_k = Σ_t a[t, k]·Â_t / Σ_t a[t, k]`` (Â: the credit-reweighted advantage) —
  a diagnostic: which latent slots the rewarded tokens read;
- patch credit map ``[P]``: the same on image columns, and *grounding accuracy*: the fraction of
  samples whose most-attended patch lies in the target region (synthetic quadrant task).
"""

from __future__ import annotations

import torch

from rlattn.credit.aggregation import attention_rows, drop_columns, sink_mask
from rlattn.credit.capture import run_captured, unwrap_model

from .latent import TYPE_IMAGE, TYPE_LATENT


class CompletionAttention:
    """Collects each completion row's attention [B, T, N] from captured q/k (layers averaged).

    ``for_rows(r)`` is a capture callback for the sub-batch ``r`` of the rows, so the collector
    can ride along on another pass over the same sequences (the trainer's statistics pass) instead
    of running its own forward. :meth:`result` drops the first ``num_sinks`` real columns and
    renormalises; ``None`` if nothing was captured.
    """

    def __init__(self, attention_mask: torch.Tensor, prompt_length: int, num_sinks: int = 1):
        self.am = attention_mask.bool()  # [B, N]
        B, N = self.am.shape
        self.rows = torch.arange(prompt_length, N, device=self.am.device)  # [T]
        self.num_sinks = num_sinks
        self.sum = torch.zeros(B, N - prompt_length, N, device=self.am.device)  # [B, T, N]
        self.layers = torch.zeros(B, device=self.am.device)  # [B] layers captured per row

    def for_rows(self, r: torch.Tensor | slice = slice(None)):
        def on_layer(layer, q, k, scaling):
            self.sum[r] += attention_rows(q, k, scaling, self.am[r], self.rows)  # [b, T, N]
            self.layers[r] += 1

        return on_layer

    def result(self) -> torch.Tensor | None:
        if not bool((self.layers > 0).any()):
            return None
        A = self.sum / self.layers.clamp_min(1)[:, None, None]  # [B, T, N]
        return drop_columns(A, sink_mask(self.am, self.num_sinks))


@torch.no_grad()
def completion_attention(policy, input_ids, attention_mask, prompt_length: int, layers: list[int],
                         num_sinks: int = 1, **forward_kwargs) -> torch.Tensor:
    """[B, T, N]: each completion row's attention over all columns, layers and heads averaged,
    the first ``num_sinks`` real columns dropped and the rest renormalised (one forward pass)."""
    collector = CompletionAttention(attention_mask, prompt_length, num_sinks)
    was_training = policy.training
    policy.eval()
    try:
        run_captured(policy, layers, collector.for_rows(), input_ids=input_ids, attention_mask=attention_mask.long(),
                     use_cache=False, **forward_kwargs)
    finally:
        policy.train(was_training)
    return collector.result()


def typed_credit(A: torch.Tensor, types: torch.Tensor, completion_mask: torch.Tensor,
                 advantages: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample attention mass by type, latent credit and patch maps.

    A [B, T, N], types [B, N] (TYPE_*), completion_mask bool [B, T], advantages [B, T] or [B].
    Returns ``latent_mass``/``image_mass`` [B], ``latent_credit`` [B, K], ``patch_mass`` and
    ``patch_credit`` [B, P] (empty when there are no such columns).
    """
    m = completion_mask.float()  # [B, T]
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(m)
    A = A * m[..., None]  # padded completion rows count for nothing
    n_rows = m.sum(1).clamp_min(1.0)  # [B]
    out = {}
    for name, kind in (("latent", TYPE_LATENT), ("image", TYPE_IMAGE)):
        cols = (types[0] == kind).nonzero().flatten()  # the layout puts them at the same columns in every row
        a = A[:, :, cols]  # [B, T, C]
        out[f"{name}_mass"] = a.sum((1, 2)) / n_rows  # [B]
        mass = a.sum(1)  # [B, C]
        out[f"{name}_attention"] = mass / n_rows[:, None]
        out[f"{name}_credit"] = (a * advantages[..., None]).sum(1) / mass.clamp_min(1e-12)  # [B, C]
    out["patch_mass"], out["patch_credit"] = out.pop("image_attention"), out.pop("image_credit")
    return out


def grounding_accuracy(patch_mass: torch.Tensor, target_quadrant: torch.Tensor, image_size: int,
                       patch_size: int) -> float:
    """Fraction of samples whose most-attended patch lies in their target quadrant (index into QUADRANTS)."""
    from .data import QUADRANTS
    from .vision import patch_quadrants

    quad_of_patch = torch.tensor([QUADRANTS.index(q) for q in patch_quadrants(image_size, patch_size)],
                                 device=patch_mass.device)
    top = patch_mass.argmax(-1)  # [B]
    return float((quad_of_patch[top] == target_quadrant.to(patch_mass.device)).float().mean())


def log_latent_diagnostics(trainer, output: dict, inputs: list[dict], mode: str,
                           attention: torch.Tensor | None = None) -> dict:
    """Compute the typed credit of one generation batch and log ``latent/*`` and ``image/*`` metrics.

    ``attention``: the completion attention [B, T, N] if it was collected during the trainer's
    statistics pass (:class:`CompletionAttention`); otherwise one forward pass computes it here.
    """
    policy = unwrap_model(trainer.model)  # DDP / accelerate wrappers off; a LatentPolicy has no PEFT wrapper
    prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
    completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
    P = prompt_ids.size(1)
    ids = torch.cat([prompt_ids, completion_ids], 1)  # [B, P+T]
    am = torch.cat([prompt_mask, completion_mask], 1)  # [B, P+T]
    fk = {"pixel_values": output["pixel_values"]} if output.get("pixel_values") is not None else {}
    layers = trainer._credit_layers or policy.select_layers
    A = attention
    if A is None:
        with trainer.accelerator.autocast():
            A = completion_attention(policy, ids, am, P, layers, policy.latent_config.num_sinks, **fk)
    types = policy.type_ids(ids, am, prompt_length=P)
    res = typed_credit(A.float(), types, completion_mask.bool(), output["advantages"].float())
    metrics = trainer._metrics[mode]
    metrics["latent/attention_mass"].append(float(res["latent_mass"].mean()))
    for k in range(res["latent_credit"].shape[1]):
        metrics[f"latent/credit_k{k}"].append(float(res["latent_credit"][:, k].mean()))
    for name, value in policy.lqformer.gates().items():
        metrics[f"latent/gate_{name}"].append(value)
    lc = policy.latent_config
    if res["patch_mass"].shape[1]:
        metrics["image/attention_mass"].append(float(res["image_mass"].mean()))
        if inputs and "quadrant_index" in inputs[0]:
            target = torch.tensor([int(x["quadrant_index"]) for x in inputs])
            if len(target) == res["patch_mass"].shape[0]:
                res["grounding_accuracy"] = grounding_accuracy(res["patch_mass"], target, lc.image_size, lc.patch_size)
                metrics["image/grounding_acc"].append(res["grounding_accuracy"])
    res["types"] = types
    trainer.last_latent = res
    return res
