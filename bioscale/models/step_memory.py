"""Peak memory of a rule's own training step, one job or a stack of M, traced on the meta device.

``bioscale.models.summary`` counts one backprop step of the bare net. A rule changes that (feedback matrices,
target propagation's inverses and their optimiser, sign-symmetry's workspace), and a stack of M jobs
(``bioscale.stack``) holds its stacked net, each member's solo model (the scratch copies its checkpoints and
diagnostics are read from), the stacked optimiser's state and the stacked layers' temporaries (the stacked
LC layer's unfolded inputs). So this builds exactly what the trainer builds (``build_member``,
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
from typing import TYPE_CHECKING
from unittest import mock

import torch

from bioscale.data.base import DataShape
from bioscale.errors import BioscaleError
from bioscale.models.summary import LiveBytes, fmt_bytes
from bioscale.spec import ArchSpec, JobSpec

if TYPE_CHECKING:
    from bioscale.rules.base import Rule


@dataclass(frozen=True)
class StepMemory:
    rule: str
    members: int
    """1: one job alone; M > 1: a stack of M jobs (seeds 0..M-1)."""
    batch_size: int
    """Per member."""
    held_bytes: int
    """Live once built: parameters, buffers, feedback matrices, inverses (a stack: also each member's solo
    copy), and one batch."""
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


def trace_step(arch: ArchSpec, dataset: str, info: DataShape, rule: str, batch_size: int, members: int = 1
               ) -> StepMemory:
    """Trace ``rule``'s build and steps for one job (``members`` 1) or a stack of ``members`` jobs."""
    from bioscale.stack import Stack, build_member, stackable

    if members < 1:
        raise BioscaleError(f"--stack {members}: a stack has at least one member (1: one job alone).")
    specs = job_specs(arch, dataset, rule, batch_size, members)
    if members > 1:
        reason = stackable(specs)
        if reason is not None:
            raise BioscaleError(f"{members} {rule} jobs on {arch.name} cannot be stacked: {reason}. Leave out "
                                "--stack to see one job's memory.")
    meta = torch.device("meta")
    lead = (members,) if members > 1 else ()
    tracker = LiveBytes()
    with tracker:
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
        with _fused_checks_off():
            if members == 1:
                _fused_as_on_a_device(member.rule)
            for phase in phases(0):
                begin_phase(phase)
                for _ in range(2):
                    step(x, y)
    return StepMemory(rule, members, batch_size, held, tracker.peak)


def _fused_as_on_a_device(rule: Rule) -> None:
    """Step as on a CPU or GPU: there the default ``impl: fused`` runs torch's ``_fused_adam_``/``_fused_sgd_``,
    which make no parameter-sized temporaries; on meta ``bioscale.optim.impl_flags`` falls back to foreach
    (torch lists no fused kernels for meta), whose Adam makes one (sqrt of the second moment: +1 parameter
    size, 25% too much for an FC net). The fused ops have meta kernels, so the groups get the flags a real
    device gets (as ``optim.use_impl`` sets them); ``_fused_checks_off`` lets the first step create the state."""
    for name, opt in rule.optimizers.items():
        if rule.optim_spec(name).impl == "fused":
            for group in opt.param_groups:
                group.update(fused=True, foreach=None)


@contextlib.contextmanager
def _fused_checks_off() -> Iterator[None]:
    """torch.optim's Adam and SGD refuse ``fused`` on a meta parameter when they create its state (a device
    check, ``_device_dtype_check_for_fused``, private): off for the trace only; and a stack's optimiser takes
    its fused path on meta as it does on a CPU or GPU. Should a torch release rename
    it, the trace still runs: the optimiser then steps as foreach (the estimate one parameter size high)."""
    from bioscale.stack.optim import StackedOptimizer

    with contextlib.ExitStack() as stack:
        # a stack's Adam steps member by member through the same fused kernel on a CPU or GPU
        stack.enter_context(mock.patch.object(StackedOptimizer, "fused_on", (*StackedOptimizer.fused_on, "meta")))
        for module in ("torch.optim.adam", "torch.optim.sgd"):
            mod = importlib.import_module(module)
            if hasattr(mod, "_device_dtype_check_for_fused"):
                stack.enter_context(mock.patch.object(mod, "_device_dtype_check_for_fused", lambda *a, **k: None))
        yield


def render_step(mem: StepMemory, solo: StepMemory | None = None) -> str:
    """Lines for ``bioscale arch summary --rule R [--stack M]``; ``solo`` is one member alone, for comparison."""
    who = f"one {mem.rule} job" if mem.members == 1 else f"a stack of {mem.members} {mem.rule} jobs"
    each = " each" if mem.members > 1 else ""
    copies = "; members' solo copies" if mem.members > 1 else ""
    lines = [f"memory of {who}, batch {mem.batch_size}{each} (its own step, traced):",
             f"  built            {fmt_bytes(mem.held_bytes):>15}  (weights, buffers{copies})",
             f"  peak of a step   {fmt_bytes(mem.peak_bytes):>15}"]
    if solo is not None and mem.members > 1:
        lines.append(f"  {mem.members} jobs alone    {fmt_bytes(mem.members * solo.peak_bytes):>15}  "
                     f"({fmt_bytes(solo.peak_bytes)} each)")
    return "\n".join(lines)
