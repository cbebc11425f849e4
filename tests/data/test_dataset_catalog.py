"""Every registered dataset resolves to a loader, and its params have usable defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bioscale.catalog import DATASETS
from bioscale.data.cifar import Cifar10Params


@pytest.mark.parametrize("name", DATASETS.names())
def test_impl_imports_and_params_default(name: str) -> None:
    info = DATASETS.get(name)
    assert callable(info.impl)
    info.params.model_validate({})


def test_design_names_are_all_registered() -> None:
    for name in ["mnist", "mnist-5k", "fashion-mnist", "digits", "cifar10", "imagenet", "coco", "synthetic"]:
        assert name in DATASETS


def test_flip_is_validated() -> None:
    with pytest.raises(ValidationError):
        Cifar10Params(flip="diagonal")  # type: ignore[arg-type]
    assert Cifar10Params().flip == "horizontal" and Cifar10Params().crop_padding == 4
