"""Typed credit: attention mass by type, latent credit, patch maps and grounding accuracy by hand."""

import torch

from rlattn.backbones import TYPE_COMPLETION, TYPE_IMAGE, TYPE_LATENT, TYPE_PROMPT
from rlattn.backbones.diagnostics import grounding_accuracy, typed_credit


def test_typed_credit_by_hand():
    # columns: prompt, image, image, latent, completion, completion
    types = torch.tensor([[TYPE_PROMPT, TYPE_IMAGE, TYPE_IMAGE, TYPE_LATENT, TYPE_COMPLETION, TYPE_COMPLETION]] * 2)
    A = torch.tensor([
        [[0.1, 0.2, 0.3, 0.4, 0.0, 0.0], [0.0, 0.5, 0.0, 0.25, 0.25, 0.0]],
        [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.1, 0.0, 0.0]],  # row 1's second token is padding
    ])  # [B=2, T=2, N=6]
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([[1.0, -2.0], [3.0, 3.0]])
    r = typed_credit(A, types, mask, adv)
    assert torch.allclose(r["latent_mass"], torch.tensor([(0.4 + 0.25) / 2, 0.0]))
    assert torch.allclose(r["image_mass"], torch.tensor([(0.5 + 0.5) / 2, 1.0]))
    # latent credit row 0: (0.4·1 + 0.25·(-2)) / 0.65
    assert torch.allclose(r["latent_credit"][0], torch.tensor([(0.4 - 0.5) / 0.65]))
    assert r["latent_credit"][1].item() == 0.0  # no attention: 0 / eps
    assert torch.allclose(r["patch_mass"], torch.tensor([[0.35, 0.15], [0.0, 1.0]]))
    # patch credit row 0: patch 1: (0.2·1 + 0.5·(-2)) / 0.7, patch 2: (0.3·1) / 0.3
    assert torch.allclose(r["patch_credit"][0], torch.tensor([-0.8 / 0.7, 1.0]))
    assert torch.allclose(r["patch_credit"][1], torch.tensor([0.0, 3.0]))


def test_grounding_accuracy_by_hand():
    # 32 px, patch 8: a 4x4 grid; patch 0 is tl, 3 is tr, 12 is bl, 15 is br
    mass = torch.zeros(4, 16)
    mass[0, 0] = 1.0   # tl, target tl -> hit
    mass[1, 3] = 1.0   # tr, target tl -> miss
    mass[2, 12] = 1.0  # bl, target bl -> hit
    mass[3, 10] = 1.0  # patch row 2, col 2 -> br, target br -> hit
    assert grounding_accuracy(mass, torch.tensor([0, 0, 2, 3]), 32, 8) == 0.75
