"""A stack too large for the device's memory is split before it is built (``bioscale.stack_fit``), and every
member still records what it would alone, saying why its stack was smaller."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bioscale import stack_fit
from bioscale.data.base import DataShape
from bioscale.models.step_memory import job_specs, trace_specs
from bioscale.spec import ArchSpec
from bioscale.stack_train import run_stack
from bioscale.store import Store
from bioscale.train import run_job
from tests.test_stack_train import _close, _jobs, _rows

MNIST = DataShape("mnist", (1, 28, 28), 10, 1, 1)
CIFAR = DataShape("cifar10", (3, 32, 32), 10, 1, 1)


def _pretend_free(monkeypatch: pytest.MonkeyPatch, free: float) -> None:
    monkeypatch.setattr(stack_fit, "available_bytes", lambda device: int(free))


def test_members_that_fit_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = job_specs(ArchSpec(name="fc"), "mnist", "fa", 64, 4)
    needed = trace_specs(specs, MNIST).peak_bytes
    one = trace_specs(specs[:1], MNIST).peak_bytes
    assert 3.5 * one < needed < 4.5 * one  # a stack needs about its members' memory alone
    for free, members in [(2 * needed, 4), (needed / stack_fit.HEADROOM + 1, 4), (0.99 * needed, 3),
                          (0.6 * needed, 2), (0.3 * needed, 1), (1, 1)]:
        _pretend_free(monkeypatch, free)
        fit = stack_fit.members_that_fit(specs, MNIST, "cpu")
        assert (fit.members, fit.needed, fit.available) == (members, needed, int(free)), free
    assert "its jobs train one job at a time" in fit.note(4)
    assert "its jobs train as stacks of at most 3" in stack_fit.Fit(3, 10, 9).note(4)


def test_a_stack_whose_memory_cannot_be_traced_is_built_anyway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is an estimate: if tracing fails (a path without a meta kernel), the jobs still train."""
    import bioscale.models.step_memory as step_memory

    def broken(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("no meta kernel for this op")

    monkeypatch.setattr(step_memory, "trace_specs", broken)
    specs = job_specs(ArchSpec(name="fc"), "mnist", "fa", 64, 3)
    with pytest.warns(UserWarning, match="building it without checking"):
        fit = stack_fit.members_that_fit(specs, MNIST, "cpu")
    assert fit.members == 3


def test_a_gpu_stack_is_traced_on_the_gpus_paths() -> None:
    """On a GPU the stacked LC layer unfolds every member's input at once and the optimiser steps flat: the
    trace for a CUDA device takes those paths (more memory), the CPU's trace the member-by-member ones."""
    specs = job_specs(ArchSpec(name="lc"), "cifar10", "fa", 16, 2)
    gpu, cpu = trace_specs(specs, CIFAR, "cuda"), trace_specs(specs, CIFAR, "cpu")
    assert gpu.held_bytes == cpu.held_bytes
    assert gpu.peak_bytes > 1.2 * cpu.peak_bytes


@pytest.mark.parametrize("fits", [2, 1])
def test_a_stack_that_does_not_fit_trains_as_smaller_stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fits: int) -> None:
    jobs = _jobs("fa")  # 4 jobs: 2 seeds x 2 lrs
    solo, stacked = Store(tmp_path / "solo"), Store(tmp_path / "stack")
    for job in jobs:
        assert run_job(job, solo).status == "done"
    real = stack_fit.members_that_fit

    def pretend(specs: list, info: DataShape, device: object) -> stack_fit.Fit:
        """A device with room for ``fits`` + 1/2 members of this stack."""
        per_member = trace_specs(specs, info).peak_bytes / len(specs)
        monkeypatch.setattr(stack_fit, "available_bytes",
                            lambda device: int((fits + 0.5) * per_member / stack_fit.HEADROOM))
        return real(specs, info, device)

    monkeypatch.setattr(stack_fit, "members_that_fit", pretend)
    results = run_stack(jobs, stacked)
    assert [r.status for r in results] == ["done"] * 4
    for job in jobs:
        _close(_rows(solo, job), _rows(stacked, job))
        recorded = stacked.job_dir("g", job.job_id).read_result()
        assert recorded is not None and recorded.status == "done"
        expected = f"as stacks of at most {fits}" if fits > 1 else "one job at a time"
        assert "a stack of 4 was predicted to need" in (recorded.error or "") and expected in recorded.error
        if fits == 1:
            assert recorded.provenance is not None and not recorded.provenance.stack
        else:
            assert recorded.provenance is not None and len(recorded.provenance.stack or []) == 2


def test_the_free_memory_of_this_machine() -> None:
    import psutil

    assert 0 < stack_fit.available_bytes(torch.device("cpu")) <= psutil.virtual_memory().total


def test_a_gpus_free_memory_counts_what_torchs_allocator_holds_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier stack in the same worker leaves blocks in torch's cache: free to torch, taken to the driver."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * 2**30)
    assert stack_fit.available_bytes(torch.device("cuda")) == 7 * 2**30
