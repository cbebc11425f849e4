"""COCO AP: bioscale's numbers are pycocotools' numbers on the same hand-made detections, in %."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bioscale.tasks.coco_eval import STAT_NAMES, coco_metrics

GT = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
               {"id": 2, "file_name": "b.jpg", "width": 120, "height": 120},
               {"id": 5, "file_name": "c.jpg", "width": 640, "height": 480}],
    "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [100, 20, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 100, 100], "area": 10000, "iscrowd": 0},
        {"id": 4, "image_id": 5, "category_id": 3, "bbox": [0, 0, 300, 200], "area": 60000, "iscrowd": 0},
        {"id": 5, "image_id": 5, "category_id": 3, "bbox": [400, 300, 10, 12], "area": 120, "iscrowd": 0},
        {"id": 6, "image_id": 5, "category_id": 7, "bbox": [350, 100, 200, 200], "area": 40000, "iscrowd": 1},
    ],
}
DETS = [
    {"image_id": 1, "category_id": 3, "bbox": [12, 11, 48, 40], "score": 0.9},
    {"image_id": 1, "category_id": 3, "bbox": [100, 20, 30, 30], "score": 0.8},  # wrong class
    {"image_id": 1, "category_id": 7, "bbox": [104, 24, 30, 30], "score": 0.6},
    {"image_id": 2, "category_id": 7, "bbox": [20, 20, 80, 80], "score": 0.7},
    {"image_id": 5, "category_id": 3, "bbox": [10, 5, 280, 190], "score": 0.95},
    {"image_id": 5, "category_id": 3, "bbox": [398, 301, 11, 11], "score": 0.3},
    {"image_id": 5, "category_id": 7, "bbox": [360, 110, 190, 190], "score": 0.5},  # on a crowd box: ignored
]


def _direct(path: Path, dets: list[dict], img_ids: list[int]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats[:6])


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(GT))
    return path


def test_ap_equals_pycocotools_on_hand_made_detections(gt_file: Path) -> None:
    ours = coco_metrics(gt_file, [dict(d) for d in DETS], [1, 2, 5])
    direct = _direct(gt_file, DETS, [1, 2, 5])
    assert list(ours) == list(STAT_NAMES)
    assert [ours[k] for k in STAT_NAMES] == pytest.approx([100 * v for v in direct], abs=1e-9)
    assert 0 < ours["ap"] < 100 and ours["ap50"] > ours["ap75"]  # the hand-made set is neither perfect nor empty


def test_only_the_evaluated_images_count(gt_file: Path) -> None:
    ours = coco_metrics(gt_file, [dict(d) for d in DETS if d["image_id"] == 1], [1])
    direct = _direct(gt_file, [d for d in DETS if d["image_id"] == 1], [1])
    # image 1 has no large box: COCOeval leaves AP_large undefined (-1), which is left out
    assert "ap_large" not in ours and direct[5] == -1
    assert ours["ap"] == pytest.approx(100 * direct[0], abs=1e-9)


def test_no_detections_score_zero(gt_file: Path) -> None:
    ours = coco_metrics(gt_file, [], [1, 2, 5])
    assert ours["ap"] == 0.0 and ours["ap50"] == 0.0


def test_perfect_detections_score_100(gt_file: Path) -> None:
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in GT["annotations"] if not a["iscrowd"]]
    ours = coco_metrics(gt_file, perfect, [1, 2, 5])
    assert ours["ap"] == pytest.approx(100.0) and ours["ap_small"] == pytest.approx(100.0)
