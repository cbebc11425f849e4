"""Run in a fresh process: peak RSS of training steps of an arch above the RSS once the model, the rule and the
batch exist (so parameters, the input and torch itself are not counted). Prints JSON. Linux only.

The peak is ``VmHWM`` of /proc/self/status, reset just before the steps (``clear_refs``): ``getrusage``'s
``ru_maxrss`` would not do, Linux carries the parent's peak across fork and exec into it.

    python tests/models/measure_step_memory.py ARCH FAMILY C H W CLASSES BATCH RULE STEPS [MEMBERS [PATHS]]

With MEMBERS (> 1) it builds a stack of that many jobs of RULE (seeds 0..M-1, as
``bioscale.models.step_memory.job_specs``) and runs STEPS steps of every phase of the rule's first epoch
(``trace_step``'s protocol); the base is then the RSS once the stack and its batch exist. PATHS ``cuda`` makes
the stack take a GPU's code paths on the CPU (the batched LC layer, the flat optimiser step), to check the
trace of a GPU stack (``device_type="cuda"``) where no GPU is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def main() -> None:
    arch, family, c, h, w, classes, batch, rule_name, steps = sys.argv[1:10]
    torch.set_num_threads(1)
    from bioscale.data.base import DataShape
    from bioscale.models import build_model
    from bioscale.rules import build_rule
    from bioscale.spec import JobSpec

    info = DataShape(family, (int(c), int(h), int(w)), int(classes), 1, 1)
    if len(sys.argv) > 10 and int(sys.argv[10]) > 1:
        if len(sys.argv) > 11 and sys.argv[11] == "cuda":
            from bioscale.stack.layers import StackedLC2d
            from bioscale.stack.optim import StackedOptimizer

            StackedLC2d.batched_on = (*StackedLC2d.batched_on, "cpu")
            StackedOptimizer.flat_on = (*StackedOptimizer.flat_on, "cpu")
        _stacked(arch, family, info, int(batch), rule_name, int(steps), int(sys.argv[10]))
        return
    spec = JobSpec.model_validate({"dataset": "synthetic", "arch": arch, "rule": rule_name,
                                   "train": {"batch_size": int(batch)}})
    rule = build_rule(spec)
    rule.prepare(build_model(spec.arch, info))
    rule.setup(torch.device("cpu"), False)
    x = torch.randn(int(batch), int(c), int(h), int(w))
    y = torch.randint(0, int(classes), (int(batch),))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = _status_kib("VmRSS") * 1024
    for _ in range(int(steps)):
        rule.train_step(x, y)
    peak = _status_kib("VmHWM") * 1024
    print(json.dumps({"base": base, "peak": peak, "step_peak": peak - base}))


def _stacked(arch: str, family: str, info: object, batch: int, rule_name: str, steps: int, members: int) -> None:
    from bioscale.models.step_memory import job_specs
    from bioscale.spec import ArchSpec
    from bioscale.stack import Stack

    stack = Stack.build(job_specs(ArchSpec(name=arch), "synthetic", rule_name, batch, members), info, "cpu")
    stack.begin_epoch(0)
    x = torch.randn(members, batch, *info.input_shape)
    y = torch.randint(0, info.num_classes, (members, batch))
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS") * 1024
    for phase in stack.phases(0):
        stack.begin_phase(phase)
        for _ in range(steps):
            stack.step(x, y)
    peak = _status_kib("VmHWM") * 1024
    print(json.dumps({"base": base, "peak": peak, "step_peak": peak - base}))


if __name__ == "__main__":
    main()
