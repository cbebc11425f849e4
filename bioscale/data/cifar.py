"""``cifar10``: 50,000/10,000 32x32 colour images from the python batches (``cifar-10-batches-py``).

Files: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a pickled dict with ``data``
(10000, 3072) uint8 (the red plane, then green, then blue, each row-major 32x32) and ``labels`` (10000
ints 0-9). They are read with ``safe_pickle`` so a tampered file cannot run code. Looked for in ``root``,
``root/cifar-10-batches-py``, then ``~/.cache/bioscale/cifar10/cifar-10-batches-py``; ``download: true``
fetches torchvision's archive there. Pixels are scaled to [0, 1] (no normalisation: the paper describes
none). Training batches are augmented on the device: random crops (zero padding ``crop_padding``) and
random flips (``flip``; see ``Cifar10Params`` for why the default is horizontal).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import NonNegativeInt

from bioscale.catalog import register_dataset
from bioscale.data import download, safe_pickle
from bioscale.data.base import DataBundle
from bioscale.data.params import DownloadParams
from bioscale.errors import DataError
from bioscale.lazy import lazy

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings

bundle = lazy("bioscale.data.bundle")
augment = lazy("bioscale.data.augment")


class Cifar10Params(DownloadParams):
    flip: Literal["horizontal", "vertical", "none"] = "horizontal"
    """Random flip of training images (p = 0.5). Bartunov et al. print "vertical flips"; the default is
    "horizontal" because a left-right mirror (a flip about the vertical axis) is what CIFAR augmentation
    means in practice, and an upside-down CIFAR image is not a plausible natural image. Set "vertical" to
    follow the printed word literally."""
    crop_padding: NonNegativeInt = 4
    """Random crops: zero-pad by this many pixels, then crop back to 32x32 (0 disables cropping). The paper
    says "random crops" without a size; 4 is the usual CIFAR choice."""


TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
FOLDER = "cifar-10-batches-py"
HOW_TO_GET = ("set `--set dataset.params.root=DIR` to the folder that holds cifar-10-batches-py (unpacked from "
              "cifar-10-python.tar.gz), or `--set dataset.params.download=true` on a machine with internet access")

_cache: dict[tuple, tuple[np.ndarray, ...]] = {}


def candidate_dirs(root: str | None) -> list[Path]:
    base = Path(root).expanduser() if root is not None else download.default_root("cifar10")
    return [base, base / FOLDER]


def find_dir(root: str | None) -> Path | None:
    for d in candidate_dirs(root):
        if all((d / f).is_file() for f in TRAIN_FILES + TEST_FILES):
            return d
    return None


def _get(batch: dict, key: str) -> Any:
    """CIFAR's python-2 pickles have bytes keys; re-pickled copies may have str keys."""
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,)), validated."""
    fix = f"Delete it and get the data again: {HOW_TO_GET}."
    try:
        batch = safe_pickle.loads(path.read_bytes())
    except safe_pickle.UnsafePickleError as e:
        raise DataError(f"cifar10: refused to load {path}: {e}. The file was tampered with or is not a "
                        f"CIFAR-10 batch. {fix}") from e
    except Exception as e:  # a damaged pickle can fail in many ways; none of them runs code
        raise DataError(f"cifar10: {path} is damaged or truncated ({type(e).__name__}: {e}). {fix}") from e
    if not isinstance(batch, dict):
        raise DataError(f"cifar10: {path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict. {fix}")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"cifar10: {path}: 'data' is a {what}, not an N x 3072 uint8 array. {fix}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        y = np.empty(0)
    if y.shape != (len(data),) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"cifar10: {path}: 'labels' is not a list of {len(data)} ints 0-9. {fix}")
    return data.reshape(-1, 3, 32, 32), y


def read_all(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    files = [d / f for f in TRAIN_FILES + TEST_FILES]
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if key not in _cache:
        tr = [read_batch(d / f) for f in TRAIN_FILES]
        te = [read_batch(d / f) for f in TEST_FILES]
        _cache.clear()
        _cache[key] = (np.concatenate([b[0] for b in tr]), np.concatenate([b[1] for b in tr]),
                       np.concatenate([b[0] for b in te]), np.concatenate([b[1] for b in te]))
    return _cache[key]  # type: ignore[return-value]


def locate(params: Cifar10Params) -> Path:
    d = find_dir(params.root)
    if d is None and params.download:
        base = Path(params.root).expanduser() if params.root else download.default_root("cifar10")
        download.download_cifar10(base)
        d = find_dir(str(base))
    if d is None:
        raise DataError(missing_message(params.root))
    return d


def missing_message(root: str | None) -> str:
    where = ", ".join(str(p) for p in candidate_dirs(root))
    return (f"cifar10: the batch files {', '.join(TRAIN_FILES + TEST_FILES)} were not found in any of: {where}. "
            f"To get them, {HOW_TO_GET}.")


def check(params: Cifar10Params) -> str | None:
    """Preflight: the six batch files are where ``locate`` looks (none is read), or a download is allowed
    and torchvision, which downloads them, is installed."""
    if find_dir(params.root) is not None:
        return None
    if params.download:
        if importlib.util.find_spec("torchvision") is None:
            return ("cifar10: dataset.params.download is true, but the download needs torchvision, which is not "
                    f"installed (`pip install torchvision`). {missing_message(params.root)}")
        return None
    return missing_message(params.root)


@register_dataset("cifar10", params=Cifar10Params, family="cifar10", order=50, input_shape=(3, 32, 32),
                  paper_dataset="cifar10", check=check,
                  summary="CIFAR-10, 50,000/10,000 from cifar-10-batches-py (or downloaded); flips and crops "
                          "on device.")
def load(params: Cifar10Params, ctx: LoaderSettings) -> DataBundle:
    x_tr, y_tr, x_te, y_te = read_all(locate(params))
    return bundle.tensor_bundle("cifar10", "cifar10", 10, (x_tr, y_tr), (x_te, y_te), ctx,
                                subset=params.subset, validation=params.validation,
                                augment=augment.flip_and_crop(params.flip, params.crop_padding))
