"""mnist-boxes: built deterministically from mnist-5k's real digits, written once in COCO's layout, read back
through the coco loader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bioscale.data import LoaderSettings, mnist_boxes
from bioscale.data.mnist_boxes import MnistBoxesParams

PARAMS = dict(train_images=6, val_images=3, canvas=96)
PINNED = "dfd84701fc4510430ab541cd3659ed816b348a5034f3ad901db7e37ab58c786c"
"""sha256 over the built files: the json bytes and each PNG's decoded pixels (the PNG bytes themselves depend
on the zlib that Pillow was built with; the pixels do not). Changes only with ``mnist_boxes.VERSION``."""


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes() if f.suffix == ".json" else np.asarray(Image.open(f)).tobytes())
    return h.hexdigest()


def test_the_build_is_deterministic_and_pinned(tmp_path: Path) -> None:
    a = mnist_boxes.build(MnistBoxesParams(root=str(tmp_path / "a"), **PARAMS))
    b = mnist_boxes.build(MnistBoxesParams(root=str(tmp_path / "b"), **PARAMS))
    assert a.name == b.name == "v1-c96-d3-n6-3"
    assert _digest(a) == _digest(b) == PINNED
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".building")]


def test_boxes_enclose_the_digits(tmp_path: Path) -> None:
    root = mnist_boxes.build(MnistBoxesParams(root=str(tmp_path), **PARAMS))
    doc = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert [c["name"] for c in doc["categories"]] == [str(d) for d in range(10)]
    assert len(doc["images"]) == 6 and doc["annotations"]
    for im in doc["images"]:
        pixels = np.asarray(Image.open(root / "train2017" / im["file_name"]))
        assert pixels.shape == (96, 96) and pixels.dtype == np.uint8
        inside = np.zeros_like(pixels, dtype=bool)
        for a in (a for a in doc["annotations"] if a["image_id"] == im["id"]):
            x, y, w, h = a["bbox"]
            assert min(x, y) >= 0 and x + w <= 96 and y + h <= 96 and w > 1 and h > 1
            assert pixels[y:y + h, x:x + w].max() > mnist_boxes.THRESHOLD
            inside[y:y + h, x:x + w] = True
        assert pixels[~inside].max(initial=0) <= mnist_boxes.THRESHOLD  # every bright pixel is in a box


def test_read_back_through_the_coco_loader(tmp_path: Path) -> None:
    params = MnistBoxesParams(root=str(tmp_path), **PARAMS)
    bundle = mnist_boxes.load(params, LoaderSettings(2, 3, torch.device("cpu"), seed=0))
    assert bundle.info.num_classes == 10 and bundle.info.input_shape == (3, 96, 96)
    assert bundle.info.train_size == 6 and bundle.test.image_ids == [1, 2, 3]
    images, targets = next(iter(bundle.test))
    assert images[0].shape == (3, 96, 96) and targets[0]["labels"].dtype == torch.int64
    built = sorted(p.name for p in tmp_path.iterdir())
    mnist_boxes.load(params, LoaderSettings(2, 3, torch.device("cpu"), seed=0))  # built once, then read
    assert sorted(p.name for p in tmp_path.iterdir()) == built


def test_unwritable_root_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match="cannot write the built set"):
        mnist_boxes.build(MnistBoxesParams(root=str(blocker / "sub"), **PARAMS))
