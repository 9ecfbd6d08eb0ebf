"""``compute_attention_stats`` refuses bad inputs with errors that name the argument and the place
(issue #21, item 10): ids outside the embeddings, an empty batch, masks that are not 0/1."""

from __future__ import annotations

import pytest
import torch

from rlattn.credit.attention_stats import compute_attention_stats
from rlattn.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    m, _ = tiny_model("llama", num_layers=2, hidden_size=32, seed=0)  # 259 embedding rows
    return m


def batch(B=2, P=3, T=4):
    ids = torch.arange(B * (P + T)).view(B, P + T) % 200 + 1  # [B, N]
    attn = torch.ones(B, P + T, dtype=torch.long)  # [B, N]
    resp = torch.zeros(B, P + T, dtype=torch.long)  # [B, N]
    resp[:, P:] = 1
    return ids, attn, resp


def test_well_formed_batch_still_works(model):
    ids, attn, resp = batch()
    stats = compute_attention_stats(model, ids, attn.bool(), resp.bool())
    assert stats.waad.shape == ids.shape


def test_out_of_vocabulary_id_names_the_vocab_size_and_position(model):
    ids, attn, resp = batch()
    ids[1, 5] = 259
    with pytest.raises(ValueError, match=r"input_ids has id 259 at sequence 1, position 5, but the model's input "
                                         r"embeddings have 259 rows \(ids 0\.\.258\)"):
        compute_attention_stats(model, ids, attn, resp)


def test_negative_id_names_the_position(model):
    ids, attn, resp = batch()
    ids[0, 2] = -100
    with pytest.raises(ValueError, match=r"input_ids has a negative id \(-100\) at sequence 0, position 2"):
        compute_attention_stats(model, ids, attn, resp)


def test_empty_batch(model):
    ids, attn, resp = batch(B=0)
    with pytest.raises(ValueError, match=r"input_ids has shape \(0, 7\): give at least one sequence"):
        compute_attention_stats(model, ids, attn, resp)


@pytest.mark.parametrize("which", ["attention_mask", "response_mask"])
def test_fractional_masks_are_refused_naming_the_argument(model, which):
    ids, attn, resp = batch()
    attn, resp = attn.float(), resp.float()
    target = attn if which == "attention_mask" else resp
    target[1, 4] = 0.5
    with pytest.raises(ValueError, match=rf"{which} has value 0.5 at sequence 1, position 4: masks must be 0/1"):
        compute_attention_stats(model, ids, attn, resp)


def test_float_ids_are_refused(model):
    ids, attn, resp = batch()
    with pytest.raises(ValueError, match="input_ids must hold integer token ids"):
        compute_attention_stats(model, ids.float(), attn, resp)
