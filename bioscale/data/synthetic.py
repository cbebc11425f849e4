"""Random class-dependent data, for unit tests only (never for results)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bioscale.catalog.datasets import SyntheticParams
from bioscale.data.base import DataBundle, DataInfo
from bioscale.data.loaders import TensorLoader

if TYPE_CHECKING:
    from bioscale.data import LoadContext  # a runtime import would be a cycle


def make_tensors(params: SyntheticParams, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class has its own mean image; examples are that mean plus noise, so it is learnable."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand((params.num_classes, *params.shape), generator=torch.Generator().manual_seed(1234))
    y = torch.arange(n) % params.num_classes
    x = (means[y] + 0.5 * torch.randn((n, *params.shape), generator=g)).clamp(0, 1)
    return x, y


def load(params: SyntheticParams, ctx: LoadContext) -> DataBundle:
    x_tr, y_tr = make_tensors(params, params.subset or params.train_size, seed=1)
    x_te, y_te = make_tensors(params, params.test_size, seed=2)
    x_tr, y_tr, x_te, y_te = (t.to(ctx.device) for t in (x_tr, y_tr, x_te, y_te))
    c, h, w = params.shape
    family = "mnist" if c == 1 else "cifar10"
    info = DataInfo(family, (c, h, w), params.num_classes, len(x_tr), len(x_te))
    return DataBundle(
        info=info,
        train=TensorLoader(x_tr, y_tr, ctx.batch_size, shuffle=True, seed=ctx.seed),
        train_eval=TensorLoader(x_tr, y_tr, ctx.eval_batch_size),
        test=TensorLoader(x_te, y_te, ctx.eval_batch_size),
    )
