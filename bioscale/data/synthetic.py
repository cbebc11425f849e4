"""Random class-dependent data, for unit tests only (never for results)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt

from bioscale.catalog import register_dataset
from bioscale.data.base import DataBundle
from bioscale.data.params import DataParams
from bioscale.lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor

    from bioscale.data import LoaderSettings

torch = lazy("torch")
bundle = lazy("bioscale.data.bundle")


class SyntheticParams(DataParams):
    train_size: PositiveInt = 512
    test_size: PositiveInt = 256
    num_classes: PositiveInt = Field(10, ge=2)
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 28, 28)


def make_tensors(params: SyntheticParams, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Each class has its own mean image; examples are that mean plus noise, so it is learnable."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand((params.num_classes, *params.shape), generator=torch.Generator().manual_seed(1234))
    y = torch.arange(n) % params.num_classes
    x = (means[y] + 0.5 * torch.randn((n, *params.shape), generator=g)).clamp(0, 1)
    return x, y


@register_dataset("synthetic", params=SyntheticParams, family="mnist", order=90, tags=("tests-only",),
                  summary="Random class-dependent tensors, for tests only.")
def load(params: SyntheticParams, ctx: LoaderSettings) -> DataBundle:
    """Through ``tensor_bundle`` like every small dataset, so ``subset`` is the same stratified pick."""
    c = params.shape[0]
    train = make_tensors(params, params.train_size, seed=1)
    test = make_tensors(params, params.test_size, seed=2)
    return bundle.tensor_bundle("synthetic", "mnist" if c == 1 else "cifar10", params.num_classes, train, test, ctx,
                         subset=params.subset, validation=params.validation, scale=1.0)
