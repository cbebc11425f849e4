"""Classification: cross-entropy on class scores; top-1 (and top-5) error in %, lower is better."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bioscale.lazy import lazy
from bioscale.tasks.base import Evaluation, Task

if TYPE_CHECKING:
    from torch import Tensor, nn

    from bioscale import distributed
    from bioscale.rules.base import Rule
    from bioscale.spec import EpochMetrics, JobResult

torch = lazy("torch")
F = lazy("torch.nn.functional")


class Classification(Task):
    name = "classification"
    best_metric = "test_error"
    lower_is_better = True
    columns = ("test_error",)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, criterion: Any) -> tuple[Tensor, Tensor | None]:
        logits = model(x)
        return criterion(logits, y), logits

    def train_error(self, model: nn.Module, data: Any, rule: Rule, group: distributed.Group | None,
                    running: float | None) -> float | None:
        return running if running is not None else self.evaluate(model, data.train_eval, rule, group).error

    def evaluate(self, model: nn.Module, loader: Any, rule: Rule, group: distributed.Group | None = None
                 ) -> Evaluation:
        """Top-1 error %, top-5 error % (None when there are 5 classes or fewer) and mean cross-entropy.

        With ``group`` the loader is sharded: each rank evaluates its rows and the counts are summed over the
        ranks (a batch too small to split, which every rank holds whole, is evaluated by rank 0 only)."""
        with torch.no_grad():
            return self._evaluate(model, loader, rule, group)

    def _evaluate(self, model: nn.Module, loader: Any, rule: Rule, group: distributed.Group | None) -> Evaluation:
        was_training = model.training
        model.eval()
        wrong1 = torch.zeros((), dtype=torch.long)
        wrong5 = torch.zeros((), dtype=torch.long)
        loss_sum = torch.zeros(())
        n = 0
        top5 = True
        for x, y in loader:
            shard = getattr(loader, "current_shard", None) if group is not None else None
            if shard is not None and not shard.counts:
                continue
            with rule.autocast():
                logits: Tensor = model(x)
            logits = logits.float()
            wrong1 = wrong1.to(logits.device) + (logits.argmax(1) != y).sum()
            top5 = logits.shape[1] > 5
            if top5:
                hit = (logits.topk(5, dim=1).indices == y[:, None]).any(1)
                wrong5 = wrong5.to(logits.device) + (~hit).sum()
            loss_sum = loss_sum.to(logits.device) + F.cross_entropy(logits, y, reduction="sum")
            n += len(y)
        model.train(was_training)
        w1, w5, total = float(wrong1), float(wrong5), float(loss_sum)
        if group is not None:
            w1, w5, total, n_f, not_top5 = group.sum([w1, w5, total, n, 0 if top5 else 1],
                                                     "summing evaluation counts")
            n, top5 = int(n_f), not_top5 == 0
        n = max(n, 1)
        return Evaluation(100.0 * w1 / n, (100.0 * w5 / n if top5 else None), total / n)

    def summarize(self, result: JobResult, rows: list[EpochMetrics]) -> None:
        super().summarize(result, rows)
        if not rows:
            return
        best = self.best(rows)
        if best is not None:
            result.test_error = best.test_error
        trained = [r.train_error for r in rows if r.train_error is not None]
        result.train_error = min(trained) if trained else None
        top5 = [r.top5_error for r in rows if r.top5_error is not None]
        result.top5_error = min(top5) if top5 else None
        evaluated = [r for r in rows if r.test_error is not None]
        result.final_test_error = evaluated[-1].test_error if evaluated else None
