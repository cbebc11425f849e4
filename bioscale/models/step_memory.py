"""Peak memory of a rule's own training step, one job or a stack of M, traced on the meta device.

``bioscale.models.summary`` counts one backprop step of the bare net. A rule changes that (feedback matrices,
target propagation's inverses and their optimiser, sign-symmetry's workspace), and a stack of M jobs
(``bioscale.stack``) holds its stacked net (each member's solo model, which checkpoints and diagnostics read,
is a view of it), the stacked optimiser's state and the stacked layers' temporaries (the stacked LC layer's
unfolded inputs on a GPU). So this builds exactly what the trainer builds (``build_member``,
``Stack.build``), on the meta device (no storage), and runs two training steps of every phase of the rule's
first epoch under ``summary.LiveBytes``, which follows every storage from its creation to its release:
``held_bytes`` is what is live once built, ``peak_bytes`` the most live at any point of the steps (the
second step has the optimiser's state live through its backward). Not counted, as in the summary: memory
inside one kernel, the CUDA context, the allocator's caching, and the data loader.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import torch

from bioscale.data.base import DataShape
from bioscale.errors import BioscaleError
from bioscale.models.summary import LiveBytes, fmt_bytes
from bioscale.spec import ArchSpec, JobSpec


@dataclass(frozen=True)
class StepMemory:
    rule: str
    members: int
    """1: one job alone; M > 1: a stack of M jobs (seeds 0..M-1)."""
    batch_size: int
    """Per member."""
    held_bytes: int
    """Live once built: parameters, buffers, feedback matrices, inverses, and one batch (per member)."""
    peak_bytes: int
    """The most live at any point of the steps, ``held_bytes`` included."""

    @property
    def step_bytes(self) -> int:
        """What the steps add at their peak above the built state (optimiser state, activations, temporaries)."""
        return self.peak_bytes - self.held_bytes


def job_specs(arch: ArchSpec, dataset: str, rule: str, batch_size: int, members: int) -> list[JobSpec]:
    """``members`` jobs of ``rule`` on ``arch`` that differ only in seed (0..M-1): what a stack would hold."""
    return [JobSpec.model_validate({"dataset": dataset, "arch": arch.model_dump(mode="json"), "rule": rule,
                                    "train": {"batch_size": batch_size}, "seed": s}) for s in range(members)]


def trace_step(arch: ArchSpec, dataset: str, info: DataShape, rule: str, batch_size: int, members: int = 1,
               device_type: str = "cpu") -> StepMemory:
    """Trace ``rule``'s build and steps for one job (``members`` 1) or a stack of ``members`` jobs, taking the
    code paths a ``device_type`` ("cpu" or "cuda") device takes."""
    from bioscale.stack import stackable

    if members < 1:
        raise BioscaleError(f"--stack {members}: a stack has at least one member (1: one job alone).")
    specs = job_specs(arch, dataset, rule, batch_size, members)
    if members > 1:
        reason = stackable(specs)
        if reason is not None:
            raise BioscaleError(f"{members} {rule} jobs on {arch.name} cannot be stacked: {reason}. Leave out "
                                "--stack to see one job's memory.")
    return trace_specs(specs, info, device_type)


def trace_specs(specs: list[JobSpec], info: DataShape, device_type: str = "cpu") -> StepMemory:
    """Trace the build and steps of these jobs: one alone, or several as one stack (they must stack)."""
    from bioscale.stack import Stack, build_member

    members, batch_size = len(specs), specs[0].train.batch_size
    meta = torch.device("meta")
    lead = (members,) if members > 1 else ()
    tracker = LiveBytes()
    with tracker, _as_on(device_type):
        with meta:
            if members > 1:
                stack = Stack.build(specs, info, meta)
                step, phases, begin_phase = stack.step, stack.phases, stack.begin_phase
                stack.begin_epoch(0)
            else:
                member = build_member(specs[0], info, meta)
                step, phases, begin_phase = member.rule.train_step, member.rule.phases, member.rule.begin_phase
                member.model.train()
                member.rule.begin_epoch(0)
        x = torch.zeros((*lead, batch_size, *info.input_shape), device=meta)
        y = torch.zeros((*lead, batch_size), dtype=torch.long, device=meta)
        held = tracker.live_bytes
        for phase in phases(0):
            begin_phase(phase)
            for _ in range(2):
                step(x, y)
    return StepMemory(specs[0].rule.name, members, batch_size, held, tracker.peak)


@contextlib.contextmanager
def _as_on(device_type: str) -> Iterator[None]:
    """Take the paths a ``device_type`` device takes where they differ in memory: the fused optimisers (see
    ``_fused_as_on_a_device``), and for a stack on a GPU the batched LC layer (its unfolded inputs) and the
    flat optimiser step (its copies of the gradients) instead of the CPU's member-by-member ones."""
    from bioscale.stack.layers import StackedLC2d
    from bioscale.stack.optim import StackedOptimizer

    if device_type not in ("cpu", "cuda"):
        raise BioscaleError(f"device {device_type!r}: the memory trace follows a 'cpu' or a 'cuda' device.")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_fused_as_on_a_device(device_type))
        if device_type == "cuda":
            stack.enter_context(mock.patch.object(StackedLC2d, "batched_on", (*StackedLC2d.batched_on, "meta")))
            stack.enter_context(mock.patch.object(StackedOptimizer, "flat_on", (*StackedOptimizer.flat_on, "meta")))
        yield


@contextlib.contextmanager
def _fused_as_on_a_device(device_type: str = "cpu") -> Iterator[None]:
    """Build and step optimisers as on a CPU or GPU, where the default ``impl: fused`` runs torch's
    ``_fused_adam_``/``_fused_sgd_`` (no parameter-sized temporaries; foreach Adam makes one, 25% too much
    for an FC net) and, on the CPU, a stack's Adam runs that kernel member by member. torch lists no fused
    kernels for meta, so ``bioscale.optim.impl_flags`` and torch's own check would fall back to foreach; the
    fused ops do have meta kernels. So for the trace only, meta joins the list both of them read (torch's
    private ``_get_fused_kernels_supported_devices``; should a release rename it, the trace still runs, as
    foreach, one parameter size high) and, for a CPU, the stacked optimiser's ``fused_on``."""
    from bioscale.stack.optim import StackedOptimizer

    optimizer = importlib.import_module("torch.optim.optimizer")
    with contextlib.ExitStack() as stack:
        if device_type == "cpu":
            stack.enter_context(mock.patch.object(StackedOptimizer, "fused_on",
                                                  (*StackedOptimizer.fused_on, "meta")))
        devices = getattr(optimizer, "_get_fused_kernels_supported_devices", None)
        if devices is not None:
            stack.enter_context(mock.patch.object(optimizer, "_get_fused_kernels_supported_devices",
                                                  lambda: [*devices(), "meta"]))
        yield


def render_step(mem: StepMemory, solo: StepMemory | None = None, device: str = "cuda") -> str:
    """Lines for ``bioscale arch summary --rule R [--stack M]``; ``solo`` is one member alone, for comparison."""
    who = f"one {mem.rule} job" if mem.members == 1 else f"a stack of {mem.members} {mem.rule} jobs"
    each = " each" if mem.members > 1 else ""
    on = "a GPU" if device == "cuda" else "the CPU"
    lines = [f"memory of {who} on {on}, batch {mem.batch_size}{each} (its own step, traced):",
             f"  built            {fmt_bytes(mem.held_bytes):>15}  (weights, buffers)",
             f"  peak of a step   {fmt_bytes(mem.peak_bytes):>15}"]
    if solo is not None and mem.members > 1:
        lines.append(f"  {mem.members} jobs alone    {fmt_bytes(mem.members * solo.peak_bytes):>15}  "
                     f"({fmt_bytes(solo.peak_bytes)} each)")
    return "\n".join(lines)
