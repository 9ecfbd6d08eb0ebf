"""Multimodal head: patch encoder, projector, image -> tensor conversion, patch quadrants."""

import numpy as np
import pytest
import torch
from PIL import Image

from rlattn.backbones.vision import Projector, TinyPatchEncoder, images_to_pixel_values, patch_quadrants


def test_shapes():
    torch.manual_seed(0)
    encoder = TinyPatchEncoder(image_size=32, patch_size=8, in_channels=3, embed_dim=32)
    assert encoder.num_patches == 16
    assert encoder.pos_embed.shape == (1, 16, 32)
    patches = encoder(torch.rand(2, 3, 32, 32))
    assert patches.shape == (2, 16, 32)
    assert Projector(32, 64)(patches).shape == (2, 16, 64)
    mlp = Projector(32, 64, hidden_dim=48)
    assert mlp(patches).shape == (2, 16, 64)
    assert [type(m).__name__ for m in mlp.net] == ["Linear", "GELU", "Linear"]
    assert isinstance(Projector(32, 64).net, torch.nn.Linear)


def test_pos_embed_init_is_unit_scale():
    # values carry no RoPE: a patch token must say where it is about as loudly as what it shows
    torch.manual_seed(0)
    pos = TinyPatchEncoder(image_size=64, patch_size=4, embed_dim=64).pos_embed  # 256 * 64 values
    assert 0.95 < pos.std().item() < 1.05 and abs(pos.mean().item()) < 0.05


def _summing_encoder() -> TinyPatchEncoder:
    """embed_dim 2: feature 0 = sum of a patch's pixels, feature 1 = minus that; no position term.

    LayerNorm over [s, -s] gives [1, -1] (up to eps) when s > 0 and [0, 0] when s == 0, so
    feature 0 of the output is 1 exactly at the lit patches.
    """
    encoder = TinyPatchEncoder(image_size=32, patch_size=8, in_channels=3, embed_dim=2)
    with torch.no_grad():
        encoder.patch_embed.weight.copy_(torch.stack([torch.ones(3, 8, 8), -torch.ones(3, 8, 8)]))
        encoder.patch_embed.bias.zero_()
        encoder.pos_embed.zero_()
    return encoder


@pytest.mark.parametrize(
    "row,col,index,quadrant", [(0, 3, 3, "tr"), (2, 1, 9, "bl"), (3, 3, 15, "br"), (1, 0, 4, "tl")]
)
def test_patch_order_is_row_major(row, col, index, quadrant):
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = 1.0
    out = _summing_encoder()(image)  # [1, 16, 2]
    expected = torch.zeros(16)
    expected[index] = 1.0
    torch.testing.assert_close(out[0, :, 0], expected, atol=1e-4, rtol=0)
    assert patch_quadrants(32, 8)[index] == quadrant


def test_patch_quadrants_by_hand():
    assert patch_quadrants(32, 8) == [
        "tl", "tl", "tr", "tr",
        "tl", "tl", "tr", "tr",
        "bl", "bl", "br", "br",
        "bl", "bl", "br", "br",
    ]  # fmt: skip
    assert patch_quadrants(32, 16) == ["tl", "tr", "bl", "br"]
    assert patch_quadrants(16, 2).count("br") == 16


def test_red_square_lands_in_its_quadrant_patches():
    from rlattn.data.synthetic import generate_quadrant

    ds = generate_quadrant(8, seed=0)
    pixels = images_to_pixel_values(ds["image"])  # [8, 3, 32, 32]
    quadrants = patch_quadrants(32, 8)
    for row, image in zip(ds, pixels):
        red_per_patch = image[0].reshape(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, 64).sum(-1)  # [16]
        assert quadrants[int(red_per_patch.argmax())] == row["solution"]


def test_images_to_pixel_values():
    a = np.zeros((4, 6, 3), np.uint8)
    a[1, 2] = (255, 0, 51)
    b = Image.fromarray(np.full((4, 6), 102, np.uint8))  # grey -> RGB
    pixels = images_to_pixel_values([a, b])
    assert pixels.shape == (2, 3, 4, 6) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0, :, 1, 2], torch.tensor([1.0, 0.0, 0.2]))
    assert pixels[0].sum().item() == pytest.approx(1.2)
    torch.testing.assert_close(pixels[1], torch.full((3, 4, 6), 0.4))
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    batch = images_to_pixel_values(np.stack([a, a]))  # a [N, H, W, 3] array is a batch
    torch.testing.assert_close(batch, torch.stack([pixels[0], pixels[0]]))


@pytest.mark.parametrize(
    "images,match",
    [
        ([], "empty"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], r"one size.*images\[1\]"),
        ([np.zeros((4, 4, 3), np.float32)], r"images\[0\] must be a uint8"),
        ([np.zeros((4, 4), np.uint8)], r"images\[0\] must be a uint8"),
        ([torch.zeros(4, 4, 3)], r"images\[0\] must be a PIL image"),
        (Image.new("RGB", (4, 4)), "list of PIL images"),
    ],
)
def test_images_to_pixel_values_errors(images, match):
    with pytest.raises(ValueError, match=match):
        images_to_pixel_values(images)


def test_errors():
    with pytest.raises(ValueError, match="image_size must be a multiple of patch_size.*30.*8"):
        TinyPatchEncoder(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="embed_dim must be a positive integer"):
        TinyPatchEncoder(embed_dim=0)
    encoder = TinyPatchEncoder()
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\].*\(2, 3, 16, 16\)"):
        encoder(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\].*\(2, 1, 32, 32\)"):
        encoder(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        encoder(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        Projector(4, 4, hidden_dim=0)
    with pytest.raises(ValueError, match="must be even.*grid 3"):
        patch_quadrants(24, 8)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patch_quadrants(32, 5)


def test_gradients_reach_encoder_and_projector():
    torch.manual_seed(0)
    encoder, projector = TinyPatchEncoder(), Projector(32, 16, hidden_dim=24)
    projector(encoder(torch.rand(2, 3, 32, 32))).pow(2).mean().backward()
    for module in (encoder, projector):
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
