"""Random class-dependent data, for unit tests only (never for results)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bioscale.catalog.datasets import SyntheticParams
from bioscale.data.base import DataBundle
from bioscale.data.bundle import tensor_bundle

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
    """Through ``tensor_bundle`` like every small dataset, so ``subset`` is the same stratified pick."""
    c = params.shape[0]
    train = make_tensors(params, params.train_size, seed=1)
    test = make_tensors(params, params.test_size, seed=2)
    return tensor_bundle("synthetic", "mnist" if c == 1 else "cifar10", params.num_classes, train, test, ctx,
                         subset=params.subset, scale=1.0)
