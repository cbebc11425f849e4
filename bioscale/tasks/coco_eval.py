"""COCO box AP with pycocotools, the library the COCO benchmark and torchvision's detection reference use.

``coco_metrics(annotation_file, detections, image_ids)`` runs ``COCOeval`` (iouType "bbox") on the ground
truth as the annotation file holds it, restricted to ``image_ids`` (the images evaluated), and returns the
first six numbers of its summary in % (as the papers print AP): ``ap`` (AP at IoU .50:.05:.95), ``ap50``,
``ap75``, ``ap_small``, ``ap_medium``, ``ap_large``. A number COCOeval leaves undefined (-1: no ground truth
box of that size) is left out. No detection at all scores 0, as in torchvision's reference evaluator.
"""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache
from pathlib import Path
from typing import Any

STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
"""``COCOeval.stats[0:6]``, in its order."""


@lru_cache(maxsize=4)
def _ground_truth(path: str, mtime_ns: int) -> Any:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        return COCO(path)


def ground_truth(annotation_file: Path) -> Any:
    """The file's ``pycocotools.coco.COCO``, parsed once per file version (every evaluation of a job reads it)."""
    path = Path(annotation_file)
    return _ground_truth(str(path), path.stat().st_mtime_ns)


def coco_metrics(annotation_file: Path, detections: list[dict[str, Any]], image_ids: list[int]) -> dict[str, float]:
    """AP numbers in % for ``detections`` (COCO result dicts: image_id, category_id, bbox [x, y, w, h] in the
    original image's pixels, score) on ``image_ids`` of ``annotation_file``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = ground_truth(annotation_file)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections) if detections else COCO()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: 100.0 * float(v) for name, v in zip(STAT_NAMES, ev.stats[:6], strict=True) if v >= 0}
