"""digits: sklearn's 8x8 digits scaled by 1/16, fixed stratified 1,437/360 split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from bioscale.data import digits
from bioscale.data.params import BundledParams


def test_digits_bundle(ctx) -> None:
    b = digits.load(BundledParams(), ctx)
    assert b.info.input_shape == (1, 8, 8) and (b.info.train_size, b.info.test_size) == (1437, 360)
    assert float(b.train.x.max()) == 1.0 and float(b.train.x.min()) == 0.0
    counts = torch.bincount(b.test.y).numpy()
    full = np.bincount(load_digits().target)
    # Each class's test share is its full share of 360, to within the one rounding step.
    assert np.all(np.abs(counts - full * 360 / full.sum()) < 1)


def test_digits_pixels_are_sklearn_over_16(ctx) -> None:
    d = load_digits()
    b = digits.load(BundledParams(), ctx)
    img = b.test.x[5, 0].numpy() * 16
    hits = [i for i in range(len(d.images)) if np.array_equal(d.images[i], img)]
    assert hits and d.target[hits[0]] == int(b.test.y[5])
