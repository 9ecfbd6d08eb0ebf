"""Typed attention credit for latent and image positions (docs/backbones.md).

Why: attention credit picks preplan/anchor tokens among *completion* tokens only, so latent and
image positions are never called text anchors. What they earn is reported separately here, from
the attention that *produced* each completion token (chosen layers, heads averaged, sinks
dropped; the same :mod:`rlattn.credit.aggregation` code the TokenSelector uses):

- ``a[b, t, n]``: attention to column n of the row whose logits emit completion token t, i.e.
  sequence position ``prompt_length + t - 1``. The first answer token is emitted at the last
  prompt position (``<eot>``): with one-token answers (``tl``) the completion's own rows never
  decide anything, so reading them would measure the wrong thing;
- attention mass per type: ``Σ_{n of type} a[b, t, n]`` averaged over completion rows;
- latent credit ``s_k = Σ_t a[t, k]·Â_t / Σ_t a[t, k]`` (Â: the credit-reweighted advantage) —
  a diagnostic: which latent slots the rewarded tokens read;
- patch credit map ``[P]``: the same on image columns, and *grounding accuracy*: the fraction of
  samples whose most-attended patch lies in the target region (synthetic quadrant task).

Attention is not attribution: a model can find the red square by attending to the dark patches
around it, and the row that emits a one-token answer is a prompt row, the same for every
rollout of a group, so its advantage-weighted map is flat. :func:`occlusion_map` measures what
the answer *depends on* instead: the drop in the answer's log-prob when one patch is painted
over with the image's median colour. :func:`quadrant_report` turns it into an *occlusion
grounding accuracy* (the target patch costs the answer the most, and at least ln 2 nats).
"""

from __future__ import annotations

import math

import torch

from rlattn.credit.aggregation import attention_rows, drop_columns, sink_mask
from rlattn.credit.capture import run_captured, unwrap_model

from .latent import TYPE_IMAGE, TYPE_LATENT


class CompletionAttention:
    """Collects the attention that emits each completion token, [B, T, N], from captured q/k
    (layers averaged): row t is sequence position ``prompt_length + t - 1``.

    ``for_rows(r)`` is a capture callback for the sub-batch ``r`` of the rows, so the collector
    can ride along on another pass over the same sequences (the trainer's statistics pass) instead
    of running its own forward. :meth:`result` drops the first ``num_sinks`` real columns and
    renormalises; ``None`` if nothing was captured.
    """

    def __init__(self, attention_mask: torch.Tensor, prompt_length: int, num_sinks: int = 1):
        self.am = attention_mask.bool()  # [B, N]
        B, N = self.am.shape
        if not 1 <= prompt_length < N:
            raise ValueError(f"prompt_length={prompt_length} must be in [1, {N}) (sequence length {N})")
        self.rows = torch.arange(prompt_length - 1, N - 1, device=self.am.device)  # [T] the emitting positions
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
    """[B, T, N]: the attention that emits each completion token (row t = position
    ``prompt_length + t - 1``) over all columns, layers and heads averaged, the first
    ``num_sinks`` real columns dropped and the rest renormalised (one forward pass)."""
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
    from rlattn.data.synthetic import QUADRANTS
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


@torch.no_grad()
def occlusion_map(policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
                  pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, P]: ``log π(completion | image) - log π(completion | image with patch p occluded)``.

    ``input_ids``/``attention_mask`` [B, N] hold prompt + completion (the completion from column
    ``prompt_length`` on, its padding masked); ``pixel_values`` [B, C, H, W]. Patch p (row-major,
    as the encoder cuts them) is painted with the image's per-channel median, which is the
    background for a small object. One forward per patch plus one; eval mode, no gradients.
    """
    B, C, H, W = pixel_values.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide the image size {H}x{W}")
    if not 1 <= prompt_length < input_ids.shape[1]:
        raise ValueError(f"prompt_length={prompt_length} must be in [1, {input_ids.shape[1]}): there is no completion")
    T = input_ids.shape[1] - prompt_length
    targets = input_ids[:, prompt_length:]  # [B, T]
    tmask = attention_mask[:, prompt_length:].float()  # [B, T]
    fill = pixel_values.flatten(2).median(-1).values[..., None, None]  # [B, C, 1, 1]
    was_training = policy.training
    policy.eval()

    def logp(pv):
        logits = policy(input_ids, attention_mask, pixel_values=pv, logits_to_keep=T + 1).logits[:, :-1]  # [B, T, V]
        lp = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # [B, T]
        return (lp * tmask).sum(1)  # [B]

    try:
        base = logp(pixel_values)
        gw = W // patch_size
        drops = []
        for p in range((H // patch_size) * gw):
            r, c = divmod(p, gw)
            pv = pixel_values.clone()
            pv[:, :, r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size] = fill
            drops.append(base - logp(pv))
    finally:
        policy.train(was_training)
    return torch.stack(drops, 1)  # [B, P]


@torch.no_grad()
def quadrant_report(policy, processor, dataset, batch_size: int = 64) -> dict[str, float]:
    """Greedy accuracy and both grounding accuracies of a policy on quadrant-task rows.

    ``dataset``: rows of :func:`rlattn.data.synthetic.generate_quadrant` (held-out seeds for an
    honest number). The answer is the policy's greedy completion (up to 4 tokens, through the
    first eos), scored by the ``exact`` reward.
    Returns ``accuracy``; ``grounding_attention``: the most-attended patch (attention that emits
    the answer, all layers, as logged during training) lies in the target quadrant;
    ``grounding_occlusion``: painting over the target patch costs the policy's own answer at
    least ln 2 nats (halves its probability) and no other patch costs more, the mean costs
    ``occlusion_drop_target`` / ``occlusion_drop_other`` (nats). The threshold matters: on this
    task only the target patch changes when painted in the median colour, so a bare argmax
    would credit even a policy that ignores the image.
    """
    from rlattn.rewards.exact import ExactReward

    from .processor import conversation_with_images

    lc = policy.latent_config
    tok = processor.tokenizer
    layers = list(range(policy.config.text_config.num_hidden_layers))
    reward = ExactReward()
    hits, att, occ, drop_on, drop_off, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0
    was_training = policy.training
    policy.eval()
    try:
        for s in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(s, min(len(dataset), s + batch_size))]
            convs = [conversation_with_images(r["prompt"], r["image"]) for r in rows]
            texts = processor.apply_chat_template(convs, add_generation_prompt=True)
            side, tok.padding_side = tok.padding_side, "left"  # prompts end where generation starts
            try:
                enc = processor(text=texts, images=[[r["image"]] for r in rows], padding=True, return_tensors="pt")
            finally:
                tok.padding_side = side
            ids, am, pv = enc["input_ids"], enc["attention_mask"], enc["pixel_values"]
            P = ids.shape[1]
            seq = policy.generate(ids, attention_mask=am, pixel_values=pv, max_new_tokens=4, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            comp = seq[:, P:]  # [b, T]; generate pads finished rows, so special tokens end the text
            is_eos = (comp == tok.eos_token_id).long()
            cmask = (is_eos.cumsum(1) - is_eos == 0).long()  # [b, T] through the first eos
            texts = tok.batch_decode(comp, skip_special_tokens=True)
            hits += sum(reward([[{"role": "assistant", "content": t}] for t in texts],
                               solution=[r["solution"] for r in rows]))
            full = torch.cat([am, cmask], 1)
            target = torch.tensor([int(r["quadrant_index"]) for r in rows])
            A = completion_attention(policy, seq, full, P, layers, lc.num_sinks, pixel_values=pv)  # [b, T, N]
            types = policy.type_ids(seq, full, prompt_length=P)
            patch_mass = typed_credit(A, types, cmask.bool(), torch.zeros(len(rows)))["patch_mass"]  # [b, P]
            att += grounding_accuracy(patch_mass, target, lc.image_size, lc.patch_size) * len(rows)
            drops = occlusion_map(policy, seq, full, P, pv, lc.patch_size)  # [b, P]
            on = drops.gather(1, target[:, None])[:, 0]  # [b] nats lost without the target patch
            occ += float(((drops.argmax(1) == target) & (on >= math.log(2))).sum())
            drop_on += float(on.sum())
            drop_off += float((drops.sum(1) - on).sum()) / max(drops.shape[1] - 1, 1)
            n += len(rows)
    finally:
        policy.train(was_training)
    return {"accuracy": hits / n, "grounding_attention": att / n, "grounding_occlusion": occ / n,
            "occlusion_drop_target": drop_on / n, "occlusion_drop_other": drop_off / n, "n": n}
