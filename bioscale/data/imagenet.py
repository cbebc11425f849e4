"""``imagenet``: ILSVRC-2012 as an ImageFolder tree, or the downsampled 32x32 / 64x64 npz variants.

Full size (``downsampled: null``): ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the val
images sorted into class folders, as torchvision's ImageFolder expects). Read by DataLoader worker
processes (``train.num_workers``, ``auto`` by default: ``bioscale.data.loaders.auto_workers``) with pinned
memory; the training loader's workers persist between epochs. The workers decode, crop and flip, and hand
over uint8 pixels; the float conversion and normalisation run on the job's device (``ToFloat``), with the
same arithmetic as torchvision's ToTensor + Normalize. In a distributed job only rank 0 scans the class
folders; the other ranks read its file list from the job's directory (``shared_folder``). Preprocessing
(``preprocess``):

- ``xiao`` (Xiao et al.'s train.py): train RandomResizedCrop(224) + RandomHorizontalFlip; val and the
  train-error pass Resize(256) + CenterCrop(224); all normalised with the ImageNet mean/std.
- ``bartunov`` (Bartunov et al.: "resized to 224 x 224"): every image resized to 224x224 (aspect ratio not
  kept), scaled to [0, 1], no augmentation and no normalisation.

Random crops and flips are seeded per (job seed, epoch, image) so they repeat on resume.

Downsampled (``downsampled: 32`` or ``64``, Chrabaszcz et al. 2017): ``train_data_batch_1.npz`` ..
``train_data_batch_10.npz`` and ``val_data.npz`` in ``root`` (or in ``root/Imagenet{S}_train_npz`` and
``root/Imagenet{S}_val_npz``, as the archives unpack), each with ``data`` (N, 3*S*S) uint8 (red plane,
green plane, blue plane) and 1-based ``labels``. Held in host RAM as uint8, batches copied to the device;
scaled to [0, 1]; ``xiao`` adds a random horizontal flip on the device.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bioscale.catalog import register_dataset
from bioscale.data.base import DataBundle, DataShape
from bioscale.data.params import DataParams
from bioscale.data.split import training_indices
from bioscale.errors import DataError
from bioscale.lazy import lazy

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings
    from bioscale.data.loaders import DeviceDataLoader

torch = lazy("torch")
augment = lazy("bioscale.data.augment")
loaders = lazy("bioscale.data.loaders")


class ImageNetParams(DataParams):
    preprocess: Literal["xiao", "bartunov"] = "xiao"
    """"xiao": train RandomResizedCrop(224) + horizontal flip, val Resize(256) + CenterCrop(224), both
    normalised with the ImageNet mean/std (Xiao et al.'s code). "bartunov": every image resized to 224x224,
    scaled to [0, 1], nothing else (Bartunov et al.: "resized to 224 x 224")."""
    downsampled: Literal[32, 64] | None = None
    """Use the downsampled ImageNet (Chrabaszcz et al.) npz batches of this size under ``root`` instead
    of the ImageFolder tree. Scaled to [0, 1]; "xiao" adds a random horizontal flip when training."""

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NUM_CLASSES = 1000
HOW_TO_GET = ("ImageNet cannot be downloaded automatically (its licence needs a login at image-net.org); "
              "point `--set dataset.params.root=DIR` at a folder with train/ and val/ class folders")


def transforms(preprocess: str, train: bool, uint8: bool = False):
    """The paper's preprocessing of one image. ``uint8``: only the geometric part, ending in a uint8 tensor
    (``PILToTensor``); ``ToFloat(preprocess)`` then does the rest on a batch, on the device."""
    from torchvision import transforms as T

    if preprocess == "bartunov":
        return T.Compose([T.Resize((224, 224)), T.PILToTensor() if uint8 else T.ToTensor()])
    geometry = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if train else [T.Resize(256), T.CenterCrop(224)]
    if uint8:
        return T.Compose([*geometry, T.PILToTensor()])
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(MEAN, STD)])


class ToFloat:
    """A batch of uint8 images (N, 3, H, W) as float32 in [0, 1], normalised with the ImageNet mean and std for
    ``xiao``: what ToTensor + Normalize compute per image (``x / 255``, then ``(x - mean) / std`` per
    channel, the same operations in the same order), run on the device where the batch already is."""

    def __init__(self, preprocess: str) -> None:
        self.normalise = preprocess == "xiao"
        self._stats: dict[Any, tuple[Any, Any]] = {}

    def __call__(self, x):
        x = x.to(torch.float32).div(255)
        if self.normalise:
            if x.device not in self._stats:
                self._stats[x.device] = (torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1),
                                         torch.tensor(STD, dtype=x.dtype, device=x.device).view(-1, 1, 1))
            mean, std = self._stats[x.device]
            x.sub_(mean).div_(std)
        return x


def read_rgb(path: str):
    """ImageFolder's loader, with a message that names the file when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f, Image.open(f) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"imagenet: cannot decode the image {path} ({e}). Replace or delete the file.") from e


def _root(params: ImageNetParams) -> Path:
    if params.root is None:
        raise DataError(f"imagenet: no dataset.params.root given. {HOW_TO_GET}"
                        + (f" (or at the folder with the {params.downsampled}x{params.downsampled} npz batches)."
                           if params.downsampled else "."))
    return Path(params.root).expanduser()


def _folders_problem(root: Path) -> str | None:
    for split in ("train", "val"):
        if not (root / split).is_dir():
            return (f"imagenet: expected the folder {root / split} with one sub-folder of images per class; it is "
                    f"missing. {HOW_TO_GET} (val/ sorted into the same class folders, e.g. with the usual "
                    "valprep.sh).")
    return None


def check(params: ImageNetParams) -> str | None:
    """Preflight: ``root`` is given and holds train/ and val/ (or the downsampled npz batches); no image or
    batch is opened, and the class folders are not scanned (1.28M files)."""
    try:
        root = _root(params)
        if params.downsampled is not None:
            _npz_files(root, params.downsampled)
            return None
    except DataError as e:
        return str(e)
    return _folders_problem(root)


def image_folders(params: ImageNetParams):
    root = _root(params)
    problem = _folders_problem(root)
    if problem:
        raise DataError(problem)
    try:
        tr, va = shared_folder(root, "train"), shared_folder(root, "val")
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"imagenet: {e}. Each class folder under {root}/train and {root}/val needs images "
                        "(.jpg, .jpeg, .png, ...).") from e
    if tr.classes != va.classes:
        only = sorted(set(tr.classes) ^ set(va.classes))[:5]
        raise DataError(f"imagenet: {root}/train and {root}/val have different class folders (e.g. {only}); "
                        "they must match so labels mean the same thing in both.")
    return tr, va


FILE_LIST = "imagefolder-files.json.gz"
"""In a distributed job's directory: rank 0's scan of the class folders, which the other ranks read."""


def _listed_folder(root: Path, classes: list[str], samples: list[tuple[str, int]]):
    """torchvision's ImageFolder over a given file list (no scan): its ``find_classes`` and ``make_dataset``
    return what rank 0 found."""
    from torchvision.datasets import ImageFolder

    class ListedImageFolder(ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return classes, {c: i for i, c in enumerate(classes)}

        def make_dataset(self, directory: str, *args: Any, **kwargs: Any) -> list[tuple[str, int]]:
            return [(os.path.join(directory, rel), target) for rel, target in samples]

    folder = ListedImageFolder(str(root), loader=read_rgb)
    folder.__class__ = ImageFolder  # the overrides served __init__ only; now it pickles like any ImageFolder
    return folder


def shared_folder(root: Path, split: str):
    """``ImageFolder(root/split)``. In a distributed job (``bioscale.distributed.job_dir``), rank 0 scans the
    tree (1.28M files for ImageNet's train/, minutes on a network file system) and writes the file list into
    the job's directory; the other ranks, which load their data after rank 0 has (``bioscale.train``), read
    it instead of scanning the same tree again. A list left by another launch (another torchrun run id) or
    another root is not used: the rank scans itself."""
    from torchvision.datasets import ImageFolder

    from bioscale import distributed

    group, jdir = distributed.current(), distributed.job_dir()
    if group is None or jdir is None or group.world == 1:
        return ImageFolder(str(root / split), loader=read_rgb)
    path = jdir / FILE_LIST
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    key = {"run": run, "root": str(root.resolve())}
    if not group.is_main:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
            if {k: data.get(k) for k in key} == key and split in data["splits"]:
                listed = data["splits"][split]
                return _listed_folder(root / split, listed["classes"], [tuple(s) for s in listed["samples"]])
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            pass
        return ImageFolder(str(root / split), loader=read_rgb)
    folder = ImageFolder(str(root / split), loader=read_rgb)
    base = str(root / split)
    entry = {"classes": folder.classes, "samples": [(os.path.relpath(p, base), t) for p, t in folder.samples]}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        if {k: data.get(k) for k in key} != key:
            raise ValueError("another launch")
    except (OSError, ValueError, EOFError):
        data = {**key, "splits": {}}
    data["splits"][split] = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:  # the others scan themselves: slower, same result
        tmp.unlink(missing_ok=True)
    return folder


def load_folders(params: ImageNetParams, ctx: LoaderSettings) -> DataBundle:
    tr, va = image_folders(params)
    tr_eval = copy.copy(tr)  # shares the file list: no second scan of 1.28M files
    tr_eval.transform = transforms(params.preprocess, False, uint8=True)
    tr.transform = transforms(params.preprocess, True, uint8=True)
    va.transform = transforms(params.preprocess, False, uint8=True)
    train_ds: torch.utils.data.Dataset = tr
    idx, held = training_indices(np.asarray(tr.targets), params.subset, params.validation, "imagenet")
    held_ds = torch.utils.data.Subset(tr_eval, held.tolist()) if held is not None else None
    if idx is not None:
        train_ds = torch.utils.data.Subset(tr, idx.tolist())
        tr_eval = torch.utils.data.Subset(tr_eval, idx.tolist())
    n_train = len(train_ds)  # type: ignore[arg-type]
    info = DataShape("imagenet", (3, 224, 224), len(tr.classes), n_train, len(va))
    finish = ToFloat(params.preprocess)

    def dl(ds: torch.utils.data.Dataset, bs: int, shuffle: bool) -> DeviceDataLoader:
        return loaders.DeviceDataLoader(ds, bs, ctx.device, shuffle=shuffle, seed=ctx.seed,
                                        num_workers=ctx.num_workers, on_device=finish)

    return DataBundle(info, dl(train_ds, ctx.batch_size, True), dl(tr_eval, ctx.eval_batch_size, False),
                      dl(va, ctx.eval_batch_size, False),
                      dl(held_ds, ctx.eval_batch_size, False) if held_ds is not None else None)


def _npz_files(root: Path, size: int) -> tuple[list[Path], Path]:
    dirs = [root, root / f"Imagenet{size}_train_npz", root / f"Imagenet{size}_val_npz", root / "train", root / "val"]
    train = {}
    val = None
    for d in dirs:
        for p in sorted(d.glob("train_data_batch_*.npz")) if d.is_dir() else []:
            m = re.fullmatch(r"train_data_batch_(\d+)\.npz", p.name)
            if m:
                train.setdefault(int(m.group(1)), p)
        if val is None and (d / "val_data.npz").is_file():
            val = d / "val_data.npz"
    if not train or val is None:
        raise DataError(f"imagenet (downsampled {size}x{size}): expected train_data_batch_1.npz ... and "
                        f"val_data.npz in {root} or in {root}/Imagenet{size}_train_npz and "
                        f"{root}/Imagenet{size}_val_npz; found {len(train)} train batches and "
                        f"{'a' if val else 'no'} val file. Download Imagenet{size}_train_npz.zip and "
                        f"Imagenet{size}_val_npz.zip from image-net.org and unpack them there.")
    return [train[k] for k in sorted(train)], val


def read_npz(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch -> (uint8 (N, 3, S, S), 0-based int64 labels), validated; pickled content is refused."""
    fix = f"Delete {path.name} and unpack it again from the Imagenet{size} archive."
    try:
        with np.load(path, allow_pickle=False) as z:
            if "data" not in z or "labels" not in z:
                raise DataError(f"imagenet: {path} has the arrays {sorted(z.files)}, not 'data' and 'labels'. {fix}")
            data, labels = z["data"], np.asarray(z["labels"]).reshape(-1)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"imagenet: cannot read {path} ({e}); it is damaged, truncated or not an npz file. "
                        f"{fix}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * size * size:
        raise DataError(f"imagenet: {path} holds 'data' of {data.dtype} {data.shape}, not N x {3 * size * size} "
                        f"uint8 ({size}x{size} colour images). Is it the {size}x{size} variant? {fix}")
    if len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer) or (
            len(labels) and (labels.min() < 1 or labels.max() > NUM_CLASSES)):
        raise DataError(f"imagenet: {path} does not hold {len(data)} integer labels 1-{NUM_CLASSES}. {fix}")
    return data.reshape(-1, 3, size, size), labels.astype(np.int64) - 1


def read_downsampled(params: ImageNetParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    size = params.downsampled
    assert size is not None
    train_files, val_file = _npz_files(_root(params), size)
    parts = [read_npz(p, size) for p in train_files]
    x_va, y_va = read_npz(val_file, size)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_va, y_va)


def load_downsampled(params: ImageNetParams, ctx: LoaderSettings) -> DataBundle:
    x_tr, y_tr, x_va, y_va = read_downsampled(params)
    idx, held = training_indices(y_tr, params.subset, params.validation, "imagenet")
    x_held, y_held = (x_tr[held], y_tr[held]) if held is not None else (None, None)
    if idx is not None:
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    size = x_tr.shape[-1]
    xt, yt, xv, yv = (torch.from_numpy(a) for a in (x_tr, y_tr, x_va, y_va))
    aug = augment.flip_and_crop("horizontal", 0) if params.preprocess == "xiao" else None
    info = DataShape("imagenet", (3, size, size), NUM_CLASSES, len(xt), len(xv))
    return DataBundle(
        info,
        loaders.HostTensorLoader(xt, yt, ctx.batch_size, ctx.device, shuffle=True, seed=ctx.seed, augment=aug),
        loaders.HostTensorLoader(xt, yt, ctx.eval_batch_size, ctx.device),
        loaders.HostTensorLoader(xv, yv, ctx.eval_batch_size, ctx.device),
        loaders.HostTensorLoader(torch.from_numpy(x_held), torch.from_numpy(y_held), ctx.eval_batch_size, ctx.device)
        if x_held is not None and y_held is not None else None,
    )


@register_dataset("imagenet", params=ImageNetParams, family="imagenet", order=60, input_shape=(3, 224, 224),
                  num_classes=1000, paper_dataset="imagenet", check=check,
                  summary="ImageNet: an ImageFolder tree under `root` (Xiao's or Bartunov's preprocessing), or the "
                          "downsampled 32x32/64x64 npz batches.")
def load(params: ImageNetParams, ctx: LoaderSettings) -> DataBundle:
    if params.downsampled is not None:
        return load_downsampled(params, ctx)
    return load_folders(params, ctx)
