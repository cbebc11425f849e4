"""The LC and conv presets actually learn: real 8x8 digits, a few epochs of backprop."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from bioscale.data.base import DataShape
from bioscale.models.presets import LCParams, build_conv, build_lc


@pytest.mark.slow
@pytest.mark.parametrize("build", [build_lc, build_conv])
def test_mnist_preset_learns_digits(build):
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    model = build(LCParams(), DataShape("mnist", (1, 8, 8), 10, 1400, len(yte)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(8):
        for i in range(0, 1400, 50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[i:i + 50]), ytr[i:i + 50]).backward()
            opt.step()
    with torch.no_grad():
        err = (model(xte).argmax(1) != yte).float().mean().item()
    assert err < 0.08, f"test error {err:.3f}"
