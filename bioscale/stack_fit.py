"""How many jobs of a stack fit the device's memory, so that a stack that would not fit is split before it is
built (issue 13, item 1: the stack's size is chosen from the device).

A stack of M jobs needs about M jobs' memory, more on a GPU (its batched LC layer unfolds every member's input
at once: a stack of 16 CIFAR LC fa jobs at batch 128 needs 20.9 GiB there, more than a 16 GB GPU has, under
the GPU default of 16 members). The need is traced on the meta device through the trainer's own build and
steps (``bioscale.models.step_memory``: a few seconds for the largest stacks) and compared with what the
device has free now: ``torch.cuda.mem_get_info`` on a GPU, the memory the OS reports available on the CPU.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from bioscale.data.base import DataShape
from bioscale.models.summary import fmt_bytes
from bioscale.spec import JobSpec

HEADROOM = 0.9
"""Plan a stack to use at most this share of the free memory: the trace leaves out memory inside kernels,
the allocator's cache and the data loader (``bioscale.models.step_memory``)."""


@dataclass(frozen=True)
class Fit:
    members: int
    """How many of the jobs fit together (at least 1: a job alone runs whatever it needs, as without stacks)."""
    needed: int
    """Traced peak bytes of the whole stack."""
    available: int

    def note(self, size: int) -> str:
        how = f"as stacks of at most {self.members}" if self.members > 1 else "one job at a time"
        return (f"a stack of {size} was predicted to need {fmt_bytes(self.needed)} at its peak, and the device had "
                f"{fmt_bytes(self.available)} free: its jobs train {how} "
                "(`bioscale arch summary ... --rule R --stack M` shows what a stack needs)")


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device`` now; on a GPU, with what torch's allocator holds cached but unused (an earlier
    stack's blocks in this process), which the driver counts as taken."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0] + cached)
    import psutil

    return int(psutil.virtual_memory().available)


def members_that_fit(specs: list[JobSpec], info: DataShape, device: Any) -> Fit:
    """How many of these stackable jobs fit on ``device`` as one stack (all of them when they do)."""
    from bioscale.models.step_memory import trace_specs

    device = torch.device(device)
    available = available_bytes(device)
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):  # the trace builds the members, seeding as they do
            needed = trace_specs(specs, info, "cuda" if device.type == "cuda" else "cpu").peak_bytes
    except Exception as exc:  # an estimate that cannot be made must not fail the jobs: try the stack
        warnings.warn(f"could not trace the memory of a stack of {len(specs)} ({type(exc).__name__}: {exc}); "
                      "building it without checking that it fits", stacklevel=2)
        return Fit(len(specs), 0, available)
    finally:
        random.setstate(state)
    if needed <= HEADROOM * available:
        return Fit(len(specs), needed, available)
    per_member = needed / len(specs)
    return Fit(max(1, min(len(specs) - 1, int(HEADROOM * available // per_member))), needed, available)
