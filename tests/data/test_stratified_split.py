"""Fixed stratified splits and subsets: same indices every run, each class keeps its share."""

from __future__ import annotations

import numpy as np
import pytest

from bioscale.data.split import stratified_pick, stratified_split, subset_indices
from bioscale.errors import DataError


def _labels() -> np.ndarray:
    # Unbalanced on purpose: 50 / 30 / 20 of classes 0 / 1 / 2, shuffled.
    y = np.repeat([0, 1, 2], [50, 30, 20])
    return np.random.default_rng(0).permutation(y)


def test_pick_is_stratified_and_exact() -> None:
    y = _labels()
    idx = stratified_pick(y, 10)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    np.testing.assert_array_equal(np.bincount(y[idx]), [5, 3, 2])


def test_pick_uses_largest_remainder() -> None:
    y = _labels()
    # 7 of 100: exact shares 3.5 / 2.1 / 1.4 -> floors 3 / 2 / 1, the one left goes to class 0 (0.5).
    np.testing.assert_array_equal(np.bincount(y[stratified_pick(y, 7)]), [4, 2, 1])


def test_pick_is_identical_across_calls_and_independent_of_global_rng() -> None:
    y = _labels()
    a = stratified_pick(y, 37)
    np.random.seed(123)
    b = stratified_pick(y, 37)
    np.testing.assert_array_equal(a, b)


def test_split_is_a_partition() -> None:
    y = _labels()
    tr, te = stratified_split(y, 20)
    assert len(tr) == 80 and len(te) == 20
    assert set(tr.tolist()) | set(te.tolist()) == set(range(100))
    assert not set(tr.tolist()) & set(te.tolist())
    np.testing.assert_array_equal(np.bincount(y[te]), [10, 6, 4])


def test_subset_none_and_full_mean_everything() -> None:
    y = _labels()
    assert subset_indices(y, None, "x") is None
    assert subset_indices(y, 100, "x") is None


def test_subset_too_large_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"subset=101 is larger than the 100 training examples of 'toy'"):
        subset_indices(_labels(), 101, "toy")


def test_validation_is_held_out_first_and_does_not_depend_on_the_subset() -> None:
    from bioscale.data.split import training_indices

    y = _labels()
    train, held = training_indices(y, None, 20, "toy")
    assert held is not None and train is not None
    assert len(held) == 20 and len(train) == 80 and not set(train.tolist()) & set(held.tolist())
    np.testing.assert_array_equal(np.bincount(y[held]), [10, 6, 4])  # stratified
    sub, held_too = training_indices(y, 40, 20, "toy")
    np.testing.assert_array_equal(held, held_too)  # the same validation images whatever the subset
    assert sub is not None and len(sub) == 40 and set(sub.tolist()) <= set(train.tolist())
    np.testing.assert_array_equal(np.bincount(y[sub]), [20, 12, 8])
    assert training_indices(y, None, None, "toy") == (None, None)


def test_a_validation_set_as_big_as_the_training_set_is_a_clear_error() -> None:
    from bioscale.data.split import training_indices

    with pytest.raises(DataError, match=r"validation=100 leaves no training example: 'toy' has 100"):
        training_indices(_labels(), None, 100, "toy")
