"""Batched crop and flip: every output is exactly one crop of the zero-padded input (checked per image
against an independent slice), flips happen about half the time, and everything follows the generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioscale.data.augment import flip_and_crop, random_crop, random_flip


def _images(n: int = 64, c: int = 3, s: int = 8) -> torch.Tensor:
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0))


def _matching_offsets(img: torch.Tensor, out: torch.Tensor, p: int) -> list[tuple[int, int]]:
    padded = F.pad(img[None], (p, p, p, p))[0]
    h, w = img.shape[-2:]
    return [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
            if torch.equal(padded[:, dy:dy + h, dx:dx + w], out)]


def test_crop_is_a_window_of_the_padded_image() -> None:
    x = _images()
    out = random_crop(x, torch.Generator().manual_seed(1), 2)
    assert out.shape == x.shape
    seen = set()
    for i in range(len(x)):
        hits = _matching_offsets(x[i], out[i], 2)
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 12  # 25 possible offsets, 64 draws: clearly random, not one fixed window


def test_crop_zero_padding_is_identity() -> None:
    x = _images()
    assert random_crop(x, torch.Generator().manual_seed(1), 0) is x


@pytest.mark.parametrize(("flip", "dim"), [("horizontal", -1), ("vertical", -2)])
def test_flip_direction_and_rate(flip: str, dim: int) -> None:
    x = _images(400)
    out = random_flip(x, torch.Generator().manual_seed(2), flip)  # type: ignore[arg-type]
    flipped = [torch.equal(out[i], x[i].flip(dim)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(a != b for a, b in zip(flipped, kept, strict=True))  # each image: one or the other
    assert 150 < sum(flipped) < 250


def test_flip_none_is_identity() -> None:
    x = _images()
    assert random_flip(x, torch.Generator(), "none") is x


def test_same_generator_same_augmentation_and_different_seeds_differ() -> None:
    aug = flip_and_crop("horizontal", 4)
    assert aug is not None
    x = _images(32, 3, 32)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_and_crop_is_crop_then_flip() -> None:
    x = _images(16, 3, 8)
    out = flip_and_crop("horizontal", 1)(x, torch.Generator().manual_seed(3))  # type: ignore[misc]
    for i in range(len(x)):
        assert _matching_offsets(x[i], out[i], 1) or _matching_offsets(x[i], out[i].flip(-1), 1)


def test_nothing_to_do_gives_none() -> None:
    assert flip_and_crop("none", 0) is None
