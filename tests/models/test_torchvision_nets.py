"""ResNet-18 and Xiao et al.'s AlexNet: parameter counts, structure and small-input adaptation."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from bioscale.data.base import DataShape
from bioscale.models.torchvision_nets import TorchvisionParams, build_alexnet, build_resnet18

IMAGENET = DataShape("imagenet", (3, 224, 224), 1000, 1, 1)
CIFAR = DataShape("cifar10", (3, 32, 32), 10, 1, 1)
MNIST = DataShape("mnist", (1, 28, 28), 10, 1, 1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta(build, info):
    with torch.device("meta"):
        return build(TorchvisionParams(), info)


def test_resnet18_imagenet_is_torchvisions():
    ours = meta(build_resnet18, IMAGENET)
    with torch.device("meta"):
        ref = torchvision.models.resnet18(weights=None)
    assert n_params(ours) == n_params(ref) == 11_689_512
    assert str(ours) == str(ref)


def test_resnet18_small_input_stem():
    ours = meta(build_resnet18, CIFAR)
    with torch.device("meta"):
        ref = torchvision.models.resnet18(weights=None, num_classes=10)
    # stem 7x7x3x64 -> 3x3x3x64, no max-pool; everything else unchanged
    assert n_params(ours) == n_params(ref) - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
    assert ours.conv1.kernel_size == (3, 3) and ours.conv1.stride == (1, 1) and ours.conv1.bias is None
    assert isinstance(ours.maxpool, nn.Identity)
    mnist = meta(build_resnet18, MNIST)
    assert mnist.conv1.in_channels == 1
    assert n_params(mnist) == n_params(ours) - 2 * 3 * 3 * 64


def test_resnet18_small_stem_init_is_fan_out_he():
    torch.manual_seed(0)
    model = build_resnet18(TorchvisionParams(), CIFAR)
    std = model.conv1.weight.std().item()
    assert abs(std - (2 / (3 * 3 * 64)) ** 0.5) < 0.02  # N(0, sqrt(2/n)), n = k*k*out_channels


def alexnet_params(in_channels: int, classes: int) -> int:
    conv = [(in_channels, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]
    total = sum(c_out * c_in * k * k + 2 * c_out for c_in, c_out, k in conv)  # no bias; BN gamma+beta
    total += 9216 * 4096 + 2 * 4096  # FC no bias + BN1d
    total += 4096 * 4096 + 2 * 4096
    total += 4096 * classes + classes  # output layer: bias, no BN
    return total


def test_alexnet_param_count():
    assert n_params(meta(build_alexnet, IMAGENET)) == alexnet_params(3, 1000)
    small = meta(build_alexnet, CIFAR)
    assert n_params(small) == alexnet_params(3, 10) - 64 * 3 * 121 + 64 * 3 * 9


def test_alexnet_structure_bn_before_every_relu_no_bias_before_bn_no_dropout():
    model = meta(build_alexnet, IMAGENET)
    mods = [m for m in model.modules() if not isinstance(m, nn.Sequential) and m is not model]
    assert not any(isinstance(m, nn.Dropout) for m in mods)
    relus = [i for i, m in enumerate(mods) if isinstance(m, nn.ReLU)]
    assert len(relus) == 7
    for i in relus:
        assert isinstance(mods[i - 1], nn.BatchNorm2d | nn.BatchNorm1d)
        assert isinstance(mods[i - 2], nn.Conv2d | nn.Linear) and mods[i - 2].bias is None
    convs = [m for m in mods if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]
    pools = [m for m in mods if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9216, 4096), (4096, 4096), (4096, 1000)]
    assert linears[-1].bias is not None


def test_alexnet_imagenet_features_are_exactly_6x6():
    model = meta(build_alexnet, IMAGENET)
    assert model.features(torch.zeros(2, 3, 224, 224, device="meta")).shape == (2, 256, 6, 6)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (1, 8, 8), (3, 64, 64)])
def test_small_inputs_reach_the_classifier(shape):
    info = DataShape("x", shape, 7, 1, 1)
    for build in (build_alexnet, build_resnet18):
        model = meta(build, info)
        assert model(torch.zeros(2, *shape, device="meta")).shape == (2, 7)
