"""A stop signal never cuts a store write in two: it is raised once the write is in place."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bioscale import interrupts
from bioscale.interrupts import Interrupted
from bioscale.store import atomic_write


def test_a_signal_inside_a_store_write_is_raised_after_it(tmp_path: Path) -> None:
    """SIGINT arrives half-way through writing (as a preemption signal did inside torch.save, whose cleanup
    then replaced Interrupted with its own error and the job was recorded failed instead of resumable)."""
    target = tmp_path / "checkpoint.pt"
    written: list[str] = []

    def write(f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"first half ")
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, before the next line
        written.append("after the signal")
        f.write(b"second half")

    with interrupts.raising(), pytest.raises(Interrupted) as caught:
        atomic_write(target, write)
    assert caught.value.signum == signal.SIGINT and written == ["after the signal"]
    assert target.read_bytes() == b"first half second half"  # complete, in place
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_outside_a_deferred_section_the_signal_raises_at_once_and_nesting_waits_for_the_outermost() -> None:
    with interrupts.raising(), pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGINT)
    reached: list[str] = []
    with interrupts.raising(), pytest.raises(Interrupted), interrupts.deferred():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("inner")
        reached.append("outer")
    assert reached == ["inner", "outer"]
    with interrupts.deferred():  # nothing pending is left over
        pass
