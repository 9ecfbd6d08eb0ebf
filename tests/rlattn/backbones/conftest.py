"""Shared builders for the backbone tests: a tiny random Llama/Qwen wrapped as a LatentPolicy."""

import pytest
import torch

from rlattn.backbones import LatentConfig, LatentPolicy, LatentProcessor
from rlattn.data.synthetic import generate_quadrant
from rlattn.backbones.processor import conversation_with_images
from rlattn.testing import tiny_model


def build(mode="cocova", K=2, image=False, arch="llama", seed=0, **latent):
    lm, tok = tiny_model(arch, num_layers=3, hidden_size=32, num_heads=4, num_kv_heads=2, seed=seed)
    cfg = LatentConfig(num_latents=K, mode=mode, select_k=3, image_size=32 if image else 0, patch_size=8,
                       vision_dim=16, **latent)
    policy = LatentPolicy.from_lm(lm, tok, cfg).eval()
    proc = LatentProcessor(tok, num_latents=K, num_image_tokens=cfg.num_patches, image_size=cfg.image_size)
    return policy, proc, tok


def open_gates(policy, value=0.7):
    with torch.no_grad():
        for b in policy.lqformer.blocks:
            b.alpha.fill_(value)
            b.beta.fill_(value)


TEXTS = ["q=3 f=7. What is f?", "a longer prompt here: x=1 y=2 z=5. What is z?"]


def batch(proc, image=False, n=2):
    """Left-padded prompt ids [n, P], mask, pixel_values (or None)."""
    if image:
        ds = generate_quadrant(n, seed=1)
        convs = [conversation_with_images(r["prompt"], r["image"]) for r in ds]
        if n > 1:  # different prompt lengths, so left padding is exercised
            convs[0][0]["content"][1]["text"] = "Where?"
    else:
        convs = [[{"role": "user", "content": TEXTS[i % len(TEXTS)]}] for i in range(n)]
    enc = proc.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = enc["input_ids"]
    P = max(map(len, ids))
    pad = proc.tokenizer.pad_token_id
    x = torch.tensor([[pad] * (P - len(i)) + list(i) for i in ids])
    am = torch.tensor([[0] * (P - len(i)) + [1] * len(i) for i in ids])
    return x, am, enc.get("pixel_values")


@pytest.fixture
def text_policy():
    return build()
