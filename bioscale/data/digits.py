"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, pixel values 0-16).

Scaled to [0, 1] by dividing by 16. The split is a fixed stratified 1,437/360 train/test hold-out (the
test set is 20%, rounded to sklearn's usual 360), fixed by ``SPLIT_SEED``, so it is part of the dataset.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from bioscale.catalog import register_dataset
from bioscale.data.base import DataBundle
from bioscale.data.params import BundledParams
from bioscale.data.split import stratified_split
from bioscale.errors import DataError
from bioscale.lazy import lazy

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings

bundle = lazy("bioscale.data.bundle")

N_TEST = 360
NEEDS_SKLEARN = "the digits dataset needs scikit-learn, which is not installed; run `pip install scikit-learn`."


def check(params: BundledParams) -> str | None:
    """Preflight: scikit-learn, which ships the digits, is installed (it is not imported: that takes seconds)."""
    return NEEDS_SKLEARN if importlib.util.find_spec("sklearn") is None else None


@lru_cache(maxsize=1)
def arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train uint8 (N, 1, 8, 8), y_train, x_test, y_test); cached because every job reads it."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(NEEDS_SKLEARN) from e
    d = load_digits()
    x = np.asarray(d.images, dtype=np.uint8).reshape(-1, 1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    tr, te = stratified_split(y, N_TEST)
    return x[tr], y[tr], x[te], y[te]


@register_dataset("digits", params=BundledParams, family="mnist", order=30, input_shape=(1, 8, 8),
                  tags=("bundled",), check=check,
                  summary="scikit-learn's bundled 8x8 digits (1,797 images), fixed stratified 1,437/360 split.")
def load(params: BundledParams, ctx: LoaderSettings) -> DataBundle:
    x_tr, y_tr, x_te, y_te = arrays()
    return bundle.tensor_bundle("digits", "mnist", 10, (x_tr, y_tr), (x_te, y_te), ctx,
                                subset=params.subset, validation=params.validation,
                                scale=16.0)
