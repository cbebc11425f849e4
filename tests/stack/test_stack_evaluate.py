"""``bioscale.stack.evaluate``: each member's score is its solo model's under the classification task."""

from __future__ import annotations

import pytest
import torch

from bioscale import tasks
from bioscale.data.base import DataShape
from bioscale.stack import Stack
from bioscale.stack.evaluate import evaluate
from tests.stack.cases import batches, specs

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize(("classes", "arch"), [(3, "fc"), (7, "fc"), (7, "conv")])
def test_members_scored_as_solo(classes: int, arch: str) -> None:
    info = DataShape("mnist", (2, 6, 6), classes, 64, 64)
    params = {"hidden": [7, 5]} if arch == "fc" else {"layers": [[3, 3, 2]], "hidden": [6]}
    all_specs = [s.model_copy(update={"arch": s.arch.model_copy(update={"name": arch, "params": params})})
                 for s in specs("fa")]
    stack = Stack.build(all_specs, info)
    stack.begin_epoch(0)
    for x, y in batches(info, 2):
        stack.step(x, y)
    g = torch.Generator().manual_seed(3)
    loader = [(torch.rand(9, *info.input_shape, generator=g), torch.randint(0, classes, (9,), generator=g))
              for _ in range(3)]
    got = evaluate(stack, loader)
    task = tasks.get("classification")
    for m in range(4):
        model, rule = stack.member(m)
        want = task.evaluate(model, loader, rule)
        assert got[m].error == want.error
        assert got[m].top5 == want.top5 and (want.top5 is None) == (classes <= 5)
        assert got[m].loss == pytest.approx(want.loss, abs=1e-6)
    assert len({e.loss for e in got}) == 4
