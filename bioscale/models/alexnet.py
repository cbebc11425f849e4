"""Xiao et al.'s AlexNet: batch norm before every ReLU, no bias before batch norm, no dropout."""

from __future__ import annotations

from torch import nn


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
