"""Xiao et al.'s ImageNet nets: torchvision's ResNet-18 and their batch-norm AlexNet.

Small inputs. Both nets were designed for 224x224 ImageNet crops; their stems shrink the input 4x (ResNet:
7x7/2 conv + 3x3/2 max-pool) or ~8x (AlexNet: 11x11/4 conv + pool), which leaves nothing of a 32x32 or
28x28 image. Below ``SMALL_INPUT`` pixels on the shorter side we use the usual CIFAR adaptation:
- ResNet-18: the stem becomes a 3x3 stride-1 conv (64 channels, no bias) and the max-pool is removed; the
  rest is torchvision's net unchanged.
- AlexNet: the first conv becomes 3x3 stride 1 padding 1 (64 channels) and the three 3x3/2 max-pools get
  padding 1 (so 8x8 digits still reach the classifier); an adaptive average pool to 6x6 (torchvision's own
  ``avgpool``; identity at 224x224) keeps the classifier's 256*6*6 = 9216 inputs.
Inputs with other than 3 channels (MNIST) change only the first conv's input channels.
"""

from __future__ import annotations

import torchvision
from torch import nn

from bioscale.catalog.archs import TorchvisionParams
from bioscale.data.base import DataInfo

SMALL_INPUT = 64
"""Inputs whose shorter side is below this get the small-input stems described above."""


def build_resnet18(params: TorchvisionParams, info: DataInfo) -> nn.Module:
    """torchvision's ResNet-18 (BasicBlock [2, 2, 2, 2], weights=None) with ``num_classes`` from the data.

    Init is torchvision's: convs N(0, sqrt(2/n)) with n = k*k*out_channels (kaiming fan-out), BN weight 1
    and bias 0, which is what Xiao et al.'s code uses.
    """
    channels, h, w = info.input_shape
    model = torchvision.models.resnet18(weights=None, num_classes=info.num_classes)
    small = min(h, w) < SMALL_INPUT
    if small or channels != 3:
        k, s, p = (3, 1, 1) if small else (7, 2, 3)
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=k, stride=s, padding=p, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small:
        model.maxpool = nn.Identity()
    return model


class AlexNetBN(nn.Module):
    """AlexNet as modified by Xiao et al.: batch norm before every ReLU, no bias before batch norm, no dropout.

    convs 64 (11x11/4, pad 2) - pool - 192 (5x5, pad 2) - pool - 384 (3x3) - 256 (3x3) - 256 (3x3) - pool,
    then FC 9216 - 4096 - 4096 - classes (the last with a bias, no BN). Pools are 3x3 stride 2. Modules keep
    PyTorch's default init, as Xiao et al.'s code does.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, small_input: bool = False) -> None:
        super().__init__()
        stem = dict(kernel_size=3, stride=1, padding=1) if small_input else dict(kernel_size=11, stride=4,
                                                                                  padding=2)
        pool_pad = 1 if small_input else 0

        def conv_bn(c_in: int, c_out: int, **conv: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, bias=False, **conv), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        def pool() -> nn.Module:
            return nn.MaxPool2d(kernel_size=3, stride=2, padding=pool_pad)

        self.features = nn.Sequential(
            *conv_bn(in_channels, 64, **stem), pool(),
            *conv_bn(64, 192, kernel_size=5, padding=2), pool(),
            *conv_bn(192, 384, kernel_size=3, padding=1),
            *conv_bn(384, 256, kernel_size=3, padding=1),
            *conv_bn(256, 256, kernel_size=3, padding=1), pool(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def build_alexnet(params: TorchvisionParams, info: DataInfo) -> nn.Module:
    """Xiao et al.'s AlexNet for ``info``'s input shape and class count (small-input stem below 64 px)."""
    channels, h, w = info.input_shape
    return AlexNetBN(info.num_classes, in_channels=channels, small_input=min(h, w) < SMALL_INPUT)
