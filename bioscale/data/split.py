"""Fixed stratified splits and subsets.

A split or subset is part of the dataset's definition, not of the experiment: it uses its own fixed seed
(``SPLIT_SEED``), never the job's, so every job of a grid (every rule, every seed) sees the same images.
Stratified means each class keeps its share of the examples (largest-remainder rounding), so a 1,000-image
subset of a balanced set has exactly 100 per class.
"""

from __future__ import annotations

import numpy as np

from bioscale.errors import DataError

SPLIT_SEED = 20180101
"""The one seed of every fixed split and subset; changing it changes the datasets."""


def _per_class_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` to take from each class, proportional to ``counts`` (largest remainder)."""
    exact = counts * (n / counts.sum())
    take = np.floor(exact).astype(np.int64)
    short = n - int(take.sum())
    # Ties broken by class index, so the result is deterministic.
    order = np.lexsort((np.arange(len(counts)), -(exact - take)))
    take[order[:short]] += 1
    return np.minimum(take, counts)


def stratified_pick(y: np.ndarray, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of ``n`` examples of ``y`` chosen at random within each class (fixed by ``seed``)."""
    y = np.asarray(y)
    if not 0 < n <= len(y):
        raise DataError(f"cannot pick {n} examples from a set of {len(y)}; choose from 1 to {len(y)}.")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    take = _per_class_counts(counts, n)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        chosen.append(members[rng.permutation(len(members))[: take[c]]])
    return np.sort(np.concatenate(chosen))


def stratified_split(y: np.ndarray, n_test: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): a fixed stratified hold-out of ``n_test`` examples."""
    test = stratified_pick(y, n_test, seed)
    mask = np.ones(len(y), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), test


def subset_indices(y: np.ndarray, subset: int | None, dataset: str) -> np.ndarray | None:
    """Indices of ``dataset.params.subset`` training examples, or None for the whole training set."""
    if subset is None or subset == len(y):
        return None
    if subset > len(y):
        raise DataError(
            f"dataset.params.subset={subset} is larger than the {len(y)} training examples of {dataset!r}; "
            f"set it to at most {len(y)} or leave it unset to train on all of them."
        )
    return stratified_pick(y, subset)


def training_indices(y: np.ndarray, subset: int | None, validation: int | None,
                     dataset: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(training indices or None for all, validation indices or None): ``dataset.params.validation`` examples
    held out of the whole training set first (a fixed stratified pick, the same whatever the subset), then
    ``subset`` training examples picked from the rest. The validation set is what a search selects on, so
    the test set is never looked at (issue 15)."""
    y = np.asarray(y)
    if validation is None:
        return subset_indices(y, subset, dataset), None
    if validation >= len(y):
        raise DataError(f"dataset.params.validation={validation} leaves no training example: {dataset!r} has "
                        f"{len(y)}; hold out fewer (e.g. 10000 of MNIST's 60000, 5000 of CIFAR-10's 50000).")
    rest, held = stratified_split(y, validation)
    picked = subset_indices(y[rest], subset, dataset)
    return (rest if picked is None else rest[picked]), held
