"""Weights & Biases: one run per job, its files in ``<job>/wandb/``.

The run id is the job id, so a resumed job continues the same run (``resume="allow"``); the run's group is
the grid and its name the job's label; its config is the resolved job spec (plus the job id and grid). Each
epoch is one history step (step = epoch), with the same scalars as TensorBoard.

Mode: ``WANDB_MODE`` is respected (``online``, ``offline``, ``disabled``). When it is not set and no API key
is configured (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc), the run is offline: it needs no
network, and ``wandb sync <job>/wandb/offline-run-*`` uploads it later. ``WANDB_PROJECT`` and
``WANDB_ENTITY`` choose where it goes (default project: ``bioscale``).

An interrupted online run that logged epochs past its last checkpoint logs those epochs again on resume;
W&B keeps the first values of a step it has seen (offline runs are separate files until synced, with the
same effect). The store's ``metrics.jsonl`` has the exact history.
"""

from __future__ import annotations

import netrc
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from bioscale.logsinks import SinkContext

if TYPE_CHECKING:
    from bioscale.spec import EpochMetrics, JobResult

DEFAULT_PROJECT = "bioscale"


def mode(env: dict[str, str] | None = None) -> str:
    """``WANDB_MODE`` if set, else ``online`` when an API key is configured, else ``offline``."""
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    return "online" if has_api_key(env) else "offline"


def has_api_key(env: dict[str, str]) -> bool:
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        path = env.get("NETRC") or None
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbSink:
    def __init__(self, context: SinkContext) -> None:
        import wandb

        job = context.job
        config: dict[str, Any] = {"job_id": job.job_id, "grid": job.grid, **job.spec.model_dump(mode="json")}
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, group=job.grid, name=job.label,
            id=job.job_id, resume="allow", dir=str(context.directory), mode=mode(),  # type: ignore[arg-type]
            config=config, tags=[job.spec.rule.name, job.spec.arch.name, job.spec.dataset.name],
            reinit="finish_previous",
            # console="off": wandb must not capture the progress display; no system-metrics sampler per job
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False))

    def epoch(self, metrics: EpochMetrics, values: dict[str, float]) -> None:
        self.run.log({**values, "epoch": metrics.epoch}, step=metrics.epoch)

    def close(self, result: JobResult | None) -> None:
        if result is not None:
            self.run.summary.update({key: value for key, value in {
                "status": result.status, "epochs": result.epochs, "best_test_error": result.test_error,
                "best_epoch": result.best_epoch, "final_test_error": result.final_test_error,
                "best_train_error": result.train_error, "top5_error": result.top5_error}.items() if value is not None})
        self.run.finish(exit_code=1 if result is not None and result.status == "failed" else 0)


def open_sink(context: SinkContext) -> WandbSink:
    return WandbSink(context)
