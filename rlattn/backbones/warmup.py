"""Format warm-up: a few SFT steps on prompts paired with *shuffled* answers.

Why: a freshly wrapped policy (new placeholder tokens, random patch encoder) does not answer in
the task's format, so every GRPO group scores 0 and the advantage is 0: nothing to learn from. A
short warm-up on the dataset's prompts with answers drawn at random from the dataset's own
``solution`` column teaches the answer *format* and nothing about the task (the label is
independent of the prompt), so accuracy after it sits at chance (1/4 for the quadrant task) and
anything above chance afterwards is learned by GRPO. It is opt-in
(``latent_format_warmup_steps``), logged, and never sees a correct label on purpose.
"""

from __future__ import annotations

import logging
import random

import torch

from .processor import conversation_with_images

logger = logging.getLogger("rlattn")


def _rows_to_batch(processor, rows, answers):
    tok = processor.tokenizer
    convs = [conversation_with_images(r["prompt"], r["image"]) if r.get("image") is not None else r["prompt"]
             for r in rows]
    enc = processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompts = enc["input_ids"]
    targets = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
    P, T = max(map(len, prompts)), max(map(len, targets))
    pad = tok.pad_token_id
    ids = torch.full((len(rows), P + T), pad, dtype=torch.long)
    am = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        ids[i, P - len(p):P] = torch.tensor(p)
        ids[i, P:P + len(t)] = torch.tensor(t)
        am[i, P - len(p):P + len(t)] = 1
        labels[i, P:P + len(t)] = torch.tensor(t)
    return ids, am, labels, enc.get("pixel_values")


def format_warmup(policy, processor, dataset, *, steps: int, lr: float = 1e-3, batch_size: int = 16,
                  seed: int = 0) -> list[float]:
    """Run ``steps`` AdamW steps of next-token loss on ``solution``-shuffled targets; returns the losses."""
    if steps <= 0:
        return []
    if "solution" not in dataset.column_names:
        raise ValueError("the format warm-up needs a 'solution' column in the training set")
    rng = random.Random(seed)
    answers = list(dataset["solution"])
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    was_training = policy.training
    policy.train()
    losses = []
    for step in range(steps):
        idx = [rng.randrange(len(dataset)) for _ in range(batch_size)]
        rows = [dataset[i] for i in idx]
        shuffled = [rng.choice(answers) for _ in idx]  # independent of the prompt: format only
        ids, am, labels, pv = _rows_to_batch(processor, rows, shuffled)
        T = ids.shape[1] - int((labels != -100).float().argmax(1).min())  # completion columns (+1 for the shift)
        logits = policy(ids, am, pixel_values=pv, logits_to_keep=T + 1).logits[:, :-1]  # [B, T, V]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, -T:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps - 1:
            logger.info("rlattn: format warm-up step %d/%d loss %.3f", step + 1, steps, losses[-1])
    policy.train(was_training)
    return losses
