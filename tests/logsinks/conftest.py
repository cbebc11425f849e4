"""A tiny job that mirrors its epochs to the sinks under test."""

from __future__ import annotations

import pytest

from bioscale.grid import resolve
from bioscale.job import Job


@pytest.fixture
def sink_job(tiny_grid: dict):
    """``sink_job(*sinks, epochs=3)``: feedback alignment (so the diagnostics hold alignment angles) on the
    tiny synthetic set, logging to ``sinks``."""

    def make(*sinks: str, epochs: int = 3) -> Job:
        raw = {**tiny_grid["base"], "rule": "fa", "train": {**tiny_grid["base"]["train"], "epochs": epochs}}
        return Job("tiny", resolve(raw), "fa fc synthetic s0", logging=sinks)

    return make

