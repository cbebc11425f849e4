"""Detection (Xiao et al. 2018's RetinaNet on MS COCO): the loss is the model's loss dict summed (focal
classification loss + box regression, torchvision's RetinaNet); the metrics are COCO box AP, AP50, AP75 and
AP for small/medium/large objects from pycocotools (``bioscale.tasks.coco_eval``); the best epoch is the
one with the highest AP.

A detection loader (``bioscale.data.coco``) yields ``(images, targets)`` lists and carries what scoring
needs: ``annotation_file`` (the ground truth), ``category_ids`` (COCO id of each contiguous label) and
``image_ids`` (the images it holds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bioscale.lazy import lazy
from bioscale.tasks.base import Evaluation, Task

if TYPE_CHECKING:
    from torch import Tensor, nn

    from bioscale import distributed
    from bioscale.rules.base import Rule
    from bioscale.spec import EpochMetrics

torch = lazy("torch")
coco_eval = lazy("bioscale.tasks.coco_eval")


class Detection(Task):
    name = "detection"
    best_metric = "ap"
    lower_is_better = False
    columns = ("ap", "ap50", "ap75")

    def loss(self, model: nn.Module, x: list[Tensor], y: list[dict[str, Any]], criterion: Any
             ) -> tuple[Tensor, Tensor | None]:
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in y]
        losses = model(x, targets)
        return sum(losses.values()), None  # type: ignore[return-value]

    def evaluate(self, model: nn.Module, loader: Any, rule: Rule, group: distributed.Group | None = None
                 ) -> Evaluation:
        with torch.no_grad():
            detections = self.detect(model, loader, rule, group)
        if group is not None:
            detections = [d for part in group.gather(detections, "gathering detections") for d in part]
        return Evaluation(metrics=coco_eval.coco_metrics(loader.annotation_file, detections, loader.image_ids))

    def detect(self, model: nn.Module, loader: Any, rule: Rule, group: distributed.Group | None
               ) -> list[dict[str, Any]]:
        """The model's detections on ``loader`` as COCO result dicts, boxes in the original images' pixels."""
        was_training = model.training
        model.eval()
        category_ids = loader.category_ids
        out: list[dict[str, Any]] = []
        for images, targets in loader:
            shard = getattr(loader, "current_shard", None) if group is not None else None
            if shard is not None and not shard.counts:
                continue
            with rule.autocast():
                found = model(images)
            for image, target, det in zip(images, targets, found, strict=True):
                out += _results(image, target, det, category_ids)
        model.train(was_training)
        return out

    def value(self, row: EpochMetrics) -> float | None:
        return row.metrics.get(self.best_metric)


def _results(image: Tensor, target: dict[str, Any], det: dict[str, Tensor], category_ids: tuple[int, ...]
             ) -> list[dict[str, Any]]:
    """One image's detections, scaled from the loader's image size back to the annotation file's."""
    h, w = image.shape[-2:]
    oh, ow = target["orig_size"]
    boxes = det["boxes"].detach().float().cpu()
    boxes = boxes * torch.tensor([ow / w, oh / h, ow / w, oh / h])
    boxes[:, 2:] -= boxes[:, :2]  # x1 y1 x2 y2 -> x y w h
    return [{"image_id": int(target["image_id"]), "category_id": int(category_ids[int(label)]),
             "bbox": [float(v) for v in box], "score": float(score)}
            for box, label, score in zip(boxes.tolist(), det["labels"].tolist(), det["scores"].float().tolist(),
                                         strict=True)]
