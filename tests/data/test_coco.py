"""coco: a tiny instances json and images written by the test, in the standard 2017 layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from bioscale.data import LoaderSettings, coco, coco_images
from bioscale.data.coco import CocoParams
from bioscale.errors import DataError


def write_coco(root: Path, *, train_ids=(7, 2, 9), extra_anns=(), categories=None) -> None:
    cats = [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 1, "name": "person"}]
    for split, ids in (("train", list(train_ids)), ("val", [11])):
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
        if split == "train" and 9 in ids:
            anns.append({"id": 4, "image_id": 9, "category_id": 1, "bbox": [0, 0, 20, 10], "iscrowd": 0})
        if split == "train":
            anns += list(extra_anns)
        (root / "annotations").mkdir(exist_ok=True)
        doc = {"images": images, "annotations": anns, "categories": cats if categories is None else categories,
               "info": {}, "licenses": []}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))


@pytest.fixture
def settings() -> LoaderSettings:
    return LoaderSettings(2, 4, torch.device("cpu"), seed=0)


def test_boxes_labels_and_images(tmp_path: Path, settings: LoaderSettings) -> None:
    write_coco(tmp_path)
    b = coco.load(CocoParams(root=str(tmp_path)), settings)
    assert b.info.family == "coco" and b.info.num_classes == 2
    assert b.info.category_ids == (1, 3) and b.info.class_names == ("person", "car")
    # image 2 has no annotation: left out of training (torchvision's reference); every val image is scored
    assert (b.info.train_size, b.info.test_size) == (2, 1)
    assert b.test.image_ids == [11] and b.test.category_ids == (1, 3)
    assert b.test.annotation_file == tmp_path / "annotations" / "instances_val2017.json"
    ds = coco_images.CocoDetection(coco.read_index(tmp_path, "train"))
    # Images in id order: 2, 7, 9.
    x, t = ds[1]
    assert t["image_id"] == 7 and x.shape == (3, 30, 40) and t["orig_size"] == (30, 40)
    assert float(x[2].mean()) == pytest.approx(200 / 255, abs=3 / 255)  # JPEG: nearly exact
    # xywh -> xyxy; category 3 -> label 1; the crowd box and the zero-width box are not targets
    torch.testing.assert_close(t["boxes"], torch.tensor([[1.0, 2.0, 11.0, 7.0]]))
    assert t["labels"].tolist() == [1]
    _, t0 = ds[0]
    assert t0["image_id"] == 2 and t0["boxes"].shape == (0, 4) and t0["labels"].dtype == torch.int64


def test_loader_batches_lists(tmp_path: Path, settings: LoaderSettings) -> None:
    write_coco(tmp_path)
    b = coco.load(CocoParams(root=str(tmp_path)), settings)
    seen = []
    for images, targets in b.train:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
        seen += [t["image_id"] for t in targets]
    assert sorted(seen) == [7, 9]
    assert sorted(t["image_id"] for _, ts in b.test for t in ts) == [11]


def test_min_size_scales_boxes(tmp_path: Path) -> None:
    write_coco(tmp_path)
    ds = coco_images.CocoDetection(coco.read_index(tmp_path, "train"), min_size=60)
    x, t = ds[1]  # 40x30 -> 80x60
    assert x.shape == (3, 60, 80) and t["orig_size"] == (30, 40)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([2.0, 4.0, 22.0, 14.0]))


def test_horizontal_flip_mirrors_image_and_boxes(tmp_path: Path) -> None:
    write_coco(tmp_path)
    index = coco.read_index(tmp_path, "train")
    plain, flipped = coco_images.CocoDetection(index), coco_images.CocoDetection(index, hflip=1.0)
    (x, _), (fx, ft) = plain[1], flipped[1]
    torch.testing.assert_close(fx, x.flip(-1))
    torch.testing.assert_close(ft["boxes"], torch.tensor([[40 - 11.0, 2.0, 40 - 1.0, 7.0]]))


def test_flips_are_seeded_per_epoch_and_image(tmp_path: Path) -> None:
    write_coco(tmp_path, train_ids=range(20, 36),
               extra_anns=[{"id": 100 + i, "image_id": 20 + i, "category_id": 3, "bbox": [2, 1, 5, 5]}
                           for i in range(16)])
    params = CocoParams(root=str(tmp_path), aspect_groups=0)

    def epoch(e: int) -> list[tuple[int, float]]:
        b = coco.load(params, LoaderSettings(4, 4, torch.device("cpu"), seed=3))
        b.train.set_epoch(e)
        return [(t["image_id"], float(t["boxes"][0, 0]) if len(t["boxes"]) else -1.0)
                for _, ts in b.train for t in ts]

    assert epoch(0) == epoch(0) and epoch(0) != epoch(1)


def test_batches_group_by_aspect_ratio(tmp_path: Path) -> None:
    """Wide (40-190 px x 30) images: every batch holds one aspect-ratio bin; no image is repeated or dropped."""
    write_coco(tmp_path, train_ids=range(100, 116),
               extra_anns=[{"id": 100 + i, "image_id": 100 + i, "category_id": 3, "bbox": [0, 0, 9, 9]}
                           for i in range(16)])
    b = coco.load(CocoParams(root=str(tmp_path), aspect_groups=3), LoaderSettings(3, 4, torch.device("cpu"), 0))
    groups = coco_images.aspect_ratio_groups(b.train.dataset.aspect_ratios(), 3)
    by_id = dict(zip(b.train.image_ids, groups, strict=True))
    assert len(set(groups)) > 1
    seen = []
    for _, targets in b.train:
        ids = [t["image_id"] for t in targets]
        assert len({by_id[i] for i in ids}) == 1
        seen += ids
    assert sorted(seen) == sorted(b.train.image_ids) and len(b.train) == sum(
        -(-groups.count(g) // 3) for g in set(groups))


def test_aspect_ratio_bins_match_the_reference_edges() -> None:
    # factor 3: edges 2**linspace(-1, 1, 7) = 0.5, 0.63, 0.79, 1, 1.26, 1.59, 2
    assert coco_images.aspect_ratio_groups([0.4, 0.5, 0.7, 1.0, 1.5, 1.99, 3.0], 3) == [0, 1, 2, 4, 5, 6, 7]


def test_subset_and_test_subset(tmp_path: Path, settings: LoaderSettings) -> None:
    write_coco(tmp_path, train_ids=range(40, 50),
               extra_anns=[{"id": 200 + i, "image_id": 40 + i, "category_id": 1, "bbox": [1, 1, 5, 5]}
                           for i in range(10)])
    b = coco.load(CocoParams(root=str(tmp_path), subset=4, test_subset=1), settings)
    assert b.train.image_ids == [40, 41, 42, 43] and b.info.train_size == 4 and b.test.image_ids == [11]


def test_box_outside_its_image_is_clamped_and_counted(tmp_path: Path, caplog) -> None:
    write_coco(tmp_path, extra_anns=[{"id": 9, "image_id": 9, "category_id": 3, "bbox": [50, -5, 40, 20]},
                                     {"id": 10, "image_id": 9, "category_id": 3, "bbox": [90, 0, 5, 5]}])
    with caplog.at_level(logging.WARNING, "bioscale.data.coco"):
        index = coco.read_index(tmp_path, "train")
    assert index.clamped == 2 and index.dropped == 2  # the degenerate box and the one wholly outside
    assert "2 boxes reach outside their image" in caplog.text
    _, t = coco_images.CocoDetection(index)[2]  # image 9: 60 x 30
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0.0, 20.0, 10.0], [50.0, 0.0, 60.0, 15.0]]))


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path, settings: LoaderSettings, caplog) -> None:
    write_coco(tmp_path)
    (tmp_path / "train2017" / f"{9:012d}.jpg").write_bytes(b"\xff\xd8 truncated")
    b = coco.load(CocoParams(root=str(tmp_path), aspect_groups=0), settings)
    with caplog.at_level(logging.WARNING, "bioscale.data.coco"):
        seen = [t["image_id"] for _, ts in b.train for t in ts]
    assert seen == [7] and b.train.skipped == 1
    assert "000000000009.jpg, which cannot be read" in caplog.text


@pytest.mark.parametrize("damage", ["no_categories", "unknown_image", "not_json", "not_coco", "no_images"])
def test_bad_annotation_file_is_one_clear_error(tmp_path: Path, settings: LoaderSettings, damage: str) -> None:
    if damage == "no_categories":
        write_coco(tmp_path, categories=[])
    else:
        write_coco(tmp_path, extra_anns=[{"id": 5, "image_id": 999, "category_id": 3, "bbox": [0, 0, 1, 1]}]
                   if damage == "unknown_image" else ())
    path = tmp_path / "annotations" / "instances_train2017.json"
    if damage == "not_json":
        path.write_text('{"images": [')
    elif damage == "not_coco":
        path.write_text('{"images": 3}')
    elif damage == "no_images":
        doc = json.loads(path.read_text())
        doc["annotations"] = []
        path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"instances_train2017.json") as e:
        coco.load(CocoParams(root=str(tmp_path)), settings)
    assert "\n" not in str(e.value)


def test_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"instances_train2017.json.*dataset.params.root="):
        coco.read_index(tmp_path, "train")
    with pytest.raises(DataError, match=r"no dataset\.params\.root"):
        coco.load(CocoParams(), None)  # type: ignore[arg-type]
    assert "is missing" in coco.check(CocoParams(root=str(tmp_path)))

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



def test_missing_image_is_skipped_with_its_name(tmp_path: Path, caplog) -> None:
    write_coco(tmp_path)
    (tmp_path / "train2017" / f"{9:012d}.jpg").unlink()
    ds = coco_images.CocoDetection(coco.read_index(tmp_path, "train"))
    with caplog.at_level(logging.WARNING, "bioscale.data.coco"):
        assert ds[2] is None
    assert "000000000009.jpg" in caplog.text
