"""The task contract: loss from a batch, evaluation, and which epoch is the best."""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import Tensor, nn

    from bioscale import distributed
    from bioscale.rules.base import Rule
    from bioscale.spec import EpochMetrics, JobResult


@dataclass
class Evaluation:
    """One pass over an evaluation set. ``error``/``top5``/``loss`` are the classification columns (None for a
    task without them); ``metrics`` holds the task's own numbers (detection: ``ap``, ``ap50``, ...)."""

    error: float | None = None
    top5: float | None = None
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    name: ClassVar[str]
    best_metric: ClassVar[str]
    """The number that picks the best epoch: an ``EpochMetrics`` field or a key of its ``metrics``."""
    lower_is_better: ClassVar[bool]
    columns: ClassVar[tuple[str, ...]]
    """The result numbers the report shows for this task by default."""

    @abstractmethod
    def loss(self, model: nn.Module, x: Any, y: Any, criterion: Any) -> tuple[Tensor, Tensor | None]:
        """(scalar loss to backpropagate, class scores for the running train error or None)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, rule: Rule, group: distributed.Group | None = None
                 ) -> Evaluation:
        """Score ``model`` on ``loader`` (sharded over ``group``'s ranks when given; every rank gets the result)."""

    def train_error(self, model: nn.Module, data: Any, rule: Rule, group: distributed.Group | None,
                    running: float | None) -> float | None:
        """The epoch's train error (``running``: the errors seen while training, when asked for); None when the
        task has no such number."""
        return None

    def value(self, row: EpochMetrics) -> float | None:
        """The best-epoch number of ``row``; None when that epoch was not evaluated (or it is undefined)."""
        v = getattr(row, self.best_metric, None)
        if v is None:
            v = row.metrics.get(self.best_metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    def best(self, rows: list[EpochMetrics]) -> EpochMetrics | None:
        """The best evaluated epoch (the first of equals), or None when no epoch has the number."""
        scored = [r for r in rows if self.value(r) is not None]
        if not scored:
            return None
        pick = min if self.lower_is_better else max
        return pick(scored, key=lambda r: self.value(r))  # type: ignore[arg-type, return-value]

    def summarize(self, result: JobResult, rows: list[EpochMetrics]) -> None:
        """Fill ``result``'s numbers from the epochs' metrics (nothing when ``rows`` is empty)."""
        if not rows:
            return
        result.epoch_time_s = statistics.median(r.epoch_time_s for r in rows)
        best = self.best(rows)
        if best is not None:
            result.best_epoch = best.epoch
            result.metrics = dict(best.metrics)
        val = [r for r in rows if r.val_error is not None]
        if val:  # the epoch a selection on the validation set would keep (bioscale.report.select)
            best_val = min(val, key=lambda r: r.val_error)  # type: ignore[arg-type, return-value]
            result.val_error, result.val_epoch = best_val.val_error, best_val.epoch
