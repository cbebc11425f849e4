"""``bioscale.stack.data``: the stacked batches are the members' solo batches, epoch by epoch."""

from __future__ import annotations

import pytest
import torch

from bioscale.data.loaders import TensorLoader
from bioscale.errors import BioscaleError
from bioscale.stack.data import StackedLoader, member_loaders

SEEDS = [0, 5, 9]


def _loader(augment: object = None, n: int = 23, shuffle: bool = True) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    return TensorLoader(torch.rand(n, 1, 3, 3, generator=g), torch.arange(n), 5, shuffle=shuffle, seed=0,
                        augment=augment)  # type: ignore[arg-type]


def _flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@pytest.mark.parametrize(("augment", "shuffle", "gathers"), [(None, True, True), (None, False, True),
                                                              (_flip, True, False)])
def test_rows_are_the_solo_batches(augment: object, shuffle: bool, gathers: bool) -> None:
    base = _loader(augment, shuffle=shuffle)
    members = member_loaders(base, SEEDS)
    stacked = StackedLoader(members)
    assert stacked.gathers is gathers
    assert members[0].x is base.x  # one copy of the data
    for epoch in (0, 3):
        stacked.set_epoch(epoch)
        solo = []
        for s in SEEDS:
            own = TensorLoader(base.x, base.y, 5, shuffle=shuffle, seed=s, augment=augment)  # type: ignore[arg-type]
            own.set_epoch(epoch)
            solo.append(list(own))
        got = list(stacked)
        assert len(got) == len(stacked) == 5
        for step, (x, y) in enumerate(got):
            assert x.shape[0] == y.shape[0] == len(SEEDS)
            for m in range(len(SEEDS)):
                assert torch.equal(x[m], solo[m][step][0]) and torch.equal(y[m], solo[m][step][1])
        if shuffle:
            assert not torch.equal(got[0][1][0], got[0][1][1])  # the members' orders differ


def test_refusals() -> None:
    with pytest.raises(BioscaleError, match="tensor-backed"):
        member_loaders([(torch.zeros(1), torch.zeros(1))], [0, 1])
    with pytest.raises(BioscaleError, match="differ in length"):
        StackedLoader([_loader(n=23), _loader(n=30)])
