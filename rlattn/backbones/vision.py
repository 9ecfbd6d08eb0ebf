"""The multimodal head of the CoCoVa-lite backbone: a tiny patch encoder and a projector.

Why: the latent backbone (docs/backbones.md) needs image tokens that a small causal LM can
attend to, without downloading a vision tower. This is the LLaVA recipe at toy scale:

- :class:`TinyPatchEncoder`: a ``Conv2d`` with kernel = stride = ``patch_size`` cuts the image
  into non-overlapping patches and embeds each one (a ViT patch embedding), plus a learned
  position embedding and a ``LayerNorm``. ``[B, 3, 32, 32] -> [B, 16, 32]`` at the defaults.
  Patches come out in row-major order: patch ``p`` is grid row ``p // g``, column ``p % g``,
  with ``g = image_size // patch_size``.
- :class:`Projector`: ``Linear`` (or ``Linear-GELU-Linear``) from the encoder width ``d_v`` to
  the LM width ``d_model``; its outputs replace the ``<img>`` placeholder embeddings.
- :func:`images_to_pixel_values`: PIL images / uint8 arrays -> float ``[N, 3, H, W]`` in [0, 1].
- :func:`patch_quadrants`: the quadrant of each patch, to score grounding accuracy (does the
  patch with the most credit lie in the quadrant that holds the target?).

Shape letters: B batch, C channels, H/W image height/width, P patches, D embedding width.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from rlattn.data.synthetic import QUADRANTS

__all__ = ["Projector", "TinyPatchEncoder", "images_to_pixel_values", "patch_quadrants"]


def _check_grid(image_size: Any, patch_size: Any) -> int:
    """``image_size // patch_size`` after checking both are positive ints that divide."""
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if image_size % patch_size:
        raise ValueError(
            f"image_size must be a multiple of patch_size, got image_size={image_size}, patch_size={patch_size}"
        )
    return image_size // patch_size


class TinyPatchEncoder(nn.Module):
    """Patch embedding (conv with kernel = stride = ``patch_size``) + position embedding + LayerNorm.

    ``forward(pixel_values [B, C, H, W]) -> [B, P, embed_dim]`` with ``H == W == image_size`` and
    ``P = num_patches = (image_size // patch_size) ** 2``, patches in row-major order.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 8, in_channels: int = 3, embed_dim: int = 32):
        super().__init__()
        grid = _check_grid(image_size, patch_size)
        for name, value in (("in_channels", in_channels), ("embed_dim", embed_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.grid_size = grid
        self.num_patches = grid * grid
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))  # [1, P, D]
        # unit-scale: after the LayerNorm a patch token must say *where* it is as clearly as *what* it
        # shows (values carry no RoPE, so a head that finds the red patch reads its place from here)
        nn.init.normal_(self.pos_embed, std=1.0)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [B, C, H, W], got shape {tuple(pixel_values.shape)}")
        _, channels, height, width = pixel_values.shape
        if channels != self.in_channels or height != self.image_size or width != self.image_size:
            raise ValueError(
                f"pixel_values must be [B, {self.in_channels}, {self.image_size}, {self.image_size}] "
                f"(in_channels, image_size of this encoder), got shape {tuple(pixel_values.shape)}"
            )
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, P, D], row-major over the g x g grid
        return self.norm(x + self.pos_embed)  # [B, P, D]


class Projector(nn.Module):
    """``[B, P, in_dim] -> [B, P, out_dim]``: ``Linear``, or ``Linear-GELU-Linear`` when ``hidden_dim`` is set."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if value is None and name == "hidden_dim":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, P, out_dim]


def images_to_pixel_values(images: Sequence[Any] | np.ndarray) -> torch.Tensor:
    """Float ``[N, 3, H, W]`` in [0, 1] from PIL images or uint8 ``[H, W, 3]`` arrays (all one size).

    PIL images are converted to RGB first. A uint8 ``[N, H, W, 3]`` array is taken as a batch.
    """
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (Image.Image, np.ndarray)) or not isinstance(images, Sequence):
        raise ValueError(
            f"images must be a list of PIL images or uint8 [H, W, 3] arrays, got {type(images).__name__}"
        )
    if len(images) == 0:
        raise ValueError("images is empty; need at least one image")
    arrays = []
    for i, image in enumerate(images):
        if isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB"))
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"images[{i}] must be a uint8 [H, W, 3] array, got dtype {image.dtype}, shape {image.shape}"
                )
            array = image
        else:
            raise ValueError(f"images[{i}] must be a PIL image or a uint8 [H, W, 3] array, got {type(image).__name__}")
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(
                f"all images must have one size; images[0] is {arrays[0].shape[:2]} (H, W), "
                f"images[{i}] is {array.shape[:2]}"
            )
        arrays.append(array)
    batch = torch.from_numpy(np.stack(arrays))  # [N, H, W, 3] uint8
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # [N, 3, H, W]


def patch_quadrants(image_size: int, patch_size: int) -> list[str]:
    """The quadrant (one of ``QUADRANTS``) of each patch, in the encoder's row-major patch order.

    The patch grid side ``image_size // patch_size`` must be even, so no patch straddles a
    quadrant boundary. ``patch_quadrants(32, 16) == ["tl", "tr", "bl", "br"]``.
    """
    grid = _check_grid(image_size, patch_size)
    if grid % 2:
        raise ValueError(
            f"image_size // patch_size must be even so each patch lies in one quadrant, "
            f"got image_size={image_size}, patch_size={patch_size} (grid {grid})"
        )
    half = grid // 2
    out = []
    for index in range(grid * grid):
        row, col = divmod(index, grid)
        out.append(QUADRANTS[2 * (row >= half) + (col >= half)])
    return out
