"""Batched augmentation on the device, drawn from the loader's (seed, epoch) generator.

One call handles a whole batch with a few tensor ops (no per-image Python loop), and all randomness comes
from the generator the ``TensorLoader`` passes in, so an epoch's augmentations are reproducible on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Flip = Literal["horizontal", "vertical", "none"]


def random_flip(x: Tensor, gen: torch.Generator | None, flip: Flip) -> Tensor:
    """Flip each image of ``x`` (N, C, H, W) with probability 1/2: "horizontal" mirrors left-right
    (reverses W), "vertical" turns upside down (reverses H)."""
    if flip == "none":
        return x
    dim = -1 if flip == "horizontal" else -2
    coin = torch.rand(len(x), generator=gen, device=x.device) < 0.5
    return torch.where(coin[:, None, None, None], x.flip(dim), x)


def random_crop(x: Tensor, gen: torch.Generator | None, padding: int) -> Tensor:
    """Zero-pad each image by ``padding`` on every side and cut a random window of the original size."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=gen, device=x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def flip_and_crop(flip: Flip, padding: int) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    """The CIFAR-10 training augmentation (crop, then flip), or None when both are off."""
    if flip == "none" and padding == 0:
        return None

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        return random_flip(random_crop(x, gen, padding), gen, flip)

    return augment
