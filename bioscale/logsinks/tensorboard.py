"""TensorBoard: event files in ``<job>/tensorboard/``, written by ``torch.utils.tensorboard.SummaryWriter``.

Scalars per epoch (step = epoch, 1-based as in ``metrics.jsonl``), and the job's hyperparameters for the
HParams dashboard, written into the same run (``torch.utils.tensorboard.summary.hparams``; ``add_hparams``
would open a second run per call) with the test error, the best test error and the train error as its
metrics. ``tensorboard --logdir results/<grid>`` shows every job of a grid side by side.

Resuming: the event files are a view of ``metrics.jsonl``, so a resumed job rebuilds them: the earlier
run's files are removed and the epochs the job resumes with are written again from the store, then training
goes on. Every reader (TensorBoard, ``EventAccumulator``, tbparse, which reads each file on its own and so
would not honour a ``purge_step``) sees each epoch once, with the values of ``metrics.jsonl``, even when the
earlier run logged an epoch past the checkpoint it is resumed from; only the wall times of the rewritten
events are those of the rebuild. Each epoch is flushed before the trainer writes its checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bioscale.logsinks import SINKS, SinkContext, hparams, scalars

if TYPE_CHECKING:
    from bioscale.spec import EpochMetrics, JobResult

FOLDER = SINKS["tensorboard"].folder
METRICS = ("test/error", "test/best_error", "train/error")
"""The HParams dashboard's metrics: scalar tags, shown at their last value."""


class TensorBoardSink:
    def __init__(self, context: SinkContext) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        folder = context.directory / FOLDER
        for earlier in folder.glob("events.out.tfevents.*"):  # rebuilt below from the store
            earlier.unlink()
        self.writer = SummaryWriter(str(folder))
        experiment, start_info, self.end_info = hparams_summary(hparams(context.job), dict.fromkeys(METRICS, 0.0))
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start_info)
        best = math.inf
        for metrics in context.done:
            best = min(best, metrics.test_error)
            self.epoch(metrics, scalars(metrics, best))

    def epoch(self, metrics: EpochMetrics, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, metrics.epoch)
        self.writer.flush()  # on disk with the epoch (a SummaryWriter flushes every 2 minutes by itself)

    def close(self, result: JobResult | None) -> None:
        if result is not None and result.status == "done":  # the HParams dashboard's "success"
            self.writer.file_writer.add_summary(self.end_info)
        self.writer.close()


def open_sink(context: SinkContext) -> TensorBoardSink:
    return TensorBoardSink(context)
