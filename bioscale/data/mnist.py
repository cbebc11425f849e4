"""``mnist`` and ``fashion-mnist``: 60,000/10,000 28x28 gray-scale images in IDX files.

Where the files are looked for, in order: the user's ``root`` (the four files directly in it, in
``root/raw`` or in torchvision's ``root/MNIST/raw`` / ``root/FashionMNIST/raw``); for Fashion-MNIST,
Debian's ``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``; then a previous
download in ``~/.cache/bioscale/<name>``. With ``download: true`` a missing set is downloaded there (or into
``root``) by torchvision. Each file may be gzipped or raw. Pixels are scaled to [0, 1]; the papers describe
no other normalisation, and no augmentation.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bioscale.catalog import register_dataset
from bioscale.data import download
from bioscale.data.base import DataBundle
from bioscale.data.idx import IdxError, read_idx
from bioscale.data.params import DownloadParams
from bioscale.errors import DataError
from bioscale.lazy import lazy

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings

bundle = lazy("bioscale.data.bundle")

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
TORCHVISION_DIR = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
HOW_TO_GET = {
    "mnist": "set `--set dataset.params.root=DIR` to a folder holding them (torchvision's MNIST layout "
             "works), or `--set dataset.params.download=true` on a machine with internet access",
    "fashion-mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`, which puts them in "
                     "/usr/share/datasets/fashion-mnist), set `--set dataset.params.root=DIR` to a folder "
                     "holding them, or `--set dataset.params.download=true` on a machine with internet access",
}

_cache: dict[tuple, tuple[np.ndarray, ...]] = {}


def candidate_dirs(name: str, root: str | None) -> list[Path]:
    """Folders that may hold the four files, most specific first."""
    bases = [Path(root).expanduser()] if root is not None else []
    if root is None and name in SYSTEM_DIRS:
        bases.append(SYSTEM_DIRS[name])
    if root is None:
        bases.append(download.default_root(name))
    dirs = []
    for b in bases:
        dirs += [b, b / "raw", b / TORCHVISION_DIR[name] / "raw"]
    return dirs


def find_file(d: Path, stem: str) -> Path | None:
    for p in (d / f"{stem}.gz", d / stem):
        if p.is_file():
            return p
    return None


def find_files(name: str, root: str | None) -> dict[str, Path] | None:
    """The four files from the first folder that holds all of them, or None."""
    for d in candidate_dirs(name, root):
        found = {k: find_file(d, stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def missing_message(name: str, root: str | None) -> str:
    where = ", ".join(str(d) for d in candidate_dirs(name, root))
    names = ", ".join(f"{s}[.gz]" for s in FILES.values())
    return f"{name}: the files {names} were not found in any of: {where}. To get them, {HOW_TO_GET[name]}."


def read_set(name: str, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and cross-check the four files: (x_train (N,1,28,28) uint8, y_train, x_test, y_test)."""
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files.values())
    if key in _cache:
        return _cache[key]  # type: ignore[return-value]
    fix = (f"Delete the damaged file and get it again: {HOW_TO_GET[name]}.")
    try:
        arrays = {k: read_idx(p) for k, p in files.items()}
    except IdxError as e:
        raise DataError(f"{name}: {e} {fix}") from e
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        xp, yp = files[f"{split}_images"], files[f"{split}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(f"{name}: {xp} holds {x.dtype} images of shape {x.shape}, not N x 28 x 28 uint8; "
                            f"it is not an MNIST-format image file. {fix}")
        if y.ndim != 1 or y.dtype != np.uint8 or len(y) != len(x) or (len(y) and y.max() > 9):
            raise DataError(f"{name}: {yp} does not hold {len(x)} uint8 labels 0-9 to match {xp}. {fix}")
        out += [x[:, None], y.astype(np.int64)]
    _cache.clear()  # keep one set: these are big
    _cache[key] = tuple(out)
    return tuple(out)  # type: ignore[return-value]


def locate(name: str, params: DownloadParams) -> dict[str, Path]:
    files = find_files(name, params.root)
    if files is None and params.download:
        root = Path(params.root).expanduser() if params.root else download.default_root(name)
        download.download_idx(name, root)
        files = find_files(name, str(root))
    if files is None:
        raise DataError(missing_message(name, params.root))
    return files


def check(name: str, params: DownloadParams) -> str | None:
    """Preflight: the four files are found where ``locate`` looks (none is read), or a download is allowed
    and torchvision, which downloads them, is installed."""
    if find_files(name, params.root) is not None:
        return None
    if params.download:
        if importlib.util.find_spec("torchvision") is None:
            return (f"{name}: dataset.params.download is true, but the download needs torchvision, which is not "
                    f"installed (`pip install torchvision`). {missing_message(name, params.root)}")
        return None
    return missing_message(name, params.root)


def load_named(name: str, params: DownloadParams, ctx: LoaderSettings) -> DataBundle:
    x_tr, y_tr, x_te, y_te = read_set(name, locate(name, params))
    return bundle.tensor_bundle(name, "mnist", 10, (x_tr, y_tr), (x_te, y_te), ctx,
                                subset=params.subset, validation=params.validation)


@register_dataset("mnist", params=DownloadParams, family="mnist", order=10, paper_dataset="mnist",
                  check=functools.partial(check, "mnist"),
                  summary="MNIST, 60,000/10,000 from IDX files under `root` (or downloaded), scaled to [0, 1].")
def load_mnist(params: DownloadParams, ctx: LoaderSettings) -> DataBundle:
    return load_named("mnist", params, ctx)


@register_dataset("fashion-mnist", params=DownloadParams, family="mnist", order=40,
                  check=functools.partial(check, "fashion-mnist"),
                  summary="Fashion-MNIST, 60,000/10,000 (Debian's dataset-fashion-mnist, `root`, or downloaded).")
def load_fashion_mnist(params: DownloadParams, ctx: LoaderSettings) -> DataBundle:
    return load_named("fashion-mnist", params, ctx)
