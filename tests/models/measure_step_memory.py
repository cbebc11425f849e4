"""Run in a fresh process: peak RSS of training steps of an arch above the RSS once the model, the rule and the
batch exist (so parameters, the input and torch itself are not counted). Prints JSON.

    python tests/models/measure_step_memory.py ARCH FAMILY C H W CLASSES BATCH RULE STEPS
"""

from __future__ import annotations

import json
import resource
import sys

import psutil
import torch


def main() -> None:
    arch, family, c, h, w, classes, batch, rule_name, steps = sys.argv[1:10]
    torch.set_num_threads(1)
    from bioscale.data.base import DataShape
    from bioscale.models import build_model
    from bioscale.rules import build_rule
    from bioscale.spec import JobSpec

    info = DataShape(family, (int(c), int(h), int(w)), int(classes), 1, 1)
    spec = JobSpec.model_validate({"dataset": "synthetic", "arch": arch, "rule": rule_name,
                                   "train": {"batch_size": int(batch)}})
    rule = build_rule(spec)
    rule.prepare(build_model(spec.arch, info))
    rule.setup(torch.device("cpu"), False)
    x = torch.randn(int(batch), int(c), int(h), int(w))
    y = torch.randint(0, int(classes), (int(batch),))
    base = psutil.Process().memory_info().rss
    before_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(int(steps)):
        rule.train_step(x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"base": base, "before_peak": before_peak, "peak": peak, "step_peak": peak - base}))


if __name__ == "__main__":
    main()
