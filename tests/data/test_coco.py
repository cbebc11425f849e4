"""coco: a tiny instances json and images written by the test, in the standard 2017 layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from bioscale.data import coco, coco_images
from bioscale.data.coco import CocoParams
from bioscale.errors import DataError


def write_coco(root: Path) -> None:
    cats = [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 1, "name": "person"}]
    for split, ids in (("train", [7, 2, 9]), ("val", [11])):
        (root / f"{split}2017").mkdir(parents=True)
        images = []
        for k, iid in enumerate(ids):
            w, h = 40 + 10 * k, 30
            Image.new("RGB", (w, h), (10 * k, 50, 200)).save(root / f"{split}2017" / f"{iid:012d}.jpg")
            images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "width": w, "height": h})
        anns = [
            {"id": 1, "image_id": ids[0], "category_id": 3, "bbox": [1.0, 2.0, 10.0, 5.0], "iscrowd": 0},
            {"id": 2, "image_id": ids[0], "category_id": 1, "bbox": [5, 6, 7, 8], "iscrowd": 1},
            {"id": 3, "image_id": ids[0], "category_id": 1, "bbox": [5, 6, 0, 8], "iscrowd": 0},  # degenerate
        ]
        if split == "train":
            anns.append({"id": 4, "image_id": 9, "category_id": 1, "bbox": [0, 0, 20, 10], "iscrowd": 0})
        (root / "annotations").mkdir(exist_ok=True)
        doc = {"images": images, "annotations": anns, "categories": cats, "info": {}, "licenses": []}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))


def test_boxes_labels_and_images(tmp_path: Path, ctx) -> None:
    write_coco(tmp_path)
    b = coco.load(CocoParams(root=str(tmp_path)), ctx)
    assert b.info.family == "coco" and b.info.num_classes == 2
    assert b.info.category_ids == (1, 3) and b.info.class_names == ("person", "car")
    assert (b.info.train_size, b.info.test_size) == (3, 1)
    ds = coco_images.CocoDetection(coco.read_index(tmp_path, "train"))
    # Images in id order: 2, 7, 9.
    x, t = ds[1]
    assert t["image_id"] == 7 and x.shape == (3, 30, 40) and t["orig_size"] == (30, 40)
    assert float(x[2].mean()) == pytest.approx(200 / 255, abs=3 / 255)  # JPEG: nearly exact
    # xywh -> xyxy; category 3 -> label 1, category 1 -> label 0; the zero-width box is dropped.
    torch.testing.assert_close(t["boxes"], torch.tensor([[1.0, 2.0, 11.0, 7.0], [5.0, 6.0, 12.0, 14.0]]))
    assert t["labels"].tolist() == [1, 0] and t["iscrowd"].tolist() == [False, True]
    _, t0 = ds[0]
    assert t0["image_id"] == 2 and t0["boxes"].shape == (0, 4) and t0["labels"].dtype == torch.int64


def test_loader_batches_lists(tmp_path: Path, ctx) -> None:
    write_coco(tmp_path)
    b = coco.load(CocoParams(root=str(tmp_path)), ctx)
    seen = []
    for images, targets in b.train:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
        seen += [t["image_id"] for t in targets]
    assert sorted(seen) == [2, 7, 9]


def test_min_size_scales_boxes(tmp_path: Path) -> None:
    write_coco(tmp_path)
    ds = coco_images.CocoDetection(coco.read_index(tmp_path, "train"), min_size=60)
    x, t = ds[1]  # 40x30 -> 80x60
    assert x.shape == (3, 60, 80) and t["orig_size"] == (30, 40)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([2.0, 4.0, 22.0, 14.0]))


def test_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"instances_train2017.json.*dataset.params.root="):
        coco.read_index(tmp_path, "train")
    with pytest.raises(DataError, match=r"no dataset\.params\.root"):
        coco.load(CocoParams(), None)  # type: ignore[arg-type]


def test_truncated_and_invalid_json(tmp_path: Path) -> None:
    write_coco(tmp_path)
    p = tmp_path / "annotations" / "instances_train2017.json"
    good = p.read_text()
    p.write_text(good[: len(good) // 2])
    with pytest.raises(DataError, match="is not valid JSON"):
        coco.read_index(tmp_path, "train")
    doc = json.loads(good)
    doc["annotations"][0]["category_id"] = 99
    p.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="missing or unknown 99"):
        coco.read_index(tmp_path, "train")
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="lacks the 'images', 'annotations' and 'categories'"):
        coco.read_index(tmp_path, "train")


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    write_coco(tmp_path)
    (tmp_path / "train2017" / f"{9:012d}.jpg").unlink()
    ds = coco_images.CocoDetection(coco.read_index(tmp_path, "train"))
    with pytest.raises(DataError, match=r"cannot read the image .*000000000009\.jpg"):
        ds[2]
