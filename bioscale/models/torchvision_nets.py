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

from typing import TYPE_CHECKING

from bioscale.catalog import register_arch
from bioscale.lazy import lazy
from bioscale.spec import Strict

if TYPE_CHECKING:
    from bioscale.data.base import DataShape

torchvision = lazy("torchvision")
nn = lazy("torch.nn")
alexnet = lazy("bioscale.models.alexnet")

XIAO = "Xiao, Chen, Liao, Poggio 2018"


class TorchvisionParams(Strict):
    """These nets take no parameters: their size is fixed; the input stem adapts to the data's shape."""


SMALL_INPUT = 64
"""Inputs whose shorter side is below this get the small-input stems described above."""


@register_arch("resnet18", params=TorchvisionParams, display="ResNet-18", order=40, layered=False,
               summary="torchvision's ResNet-18.", source=XIAO)
def build_resnet18(params: TorchvisionParams, info: DataShape) -> nn.Module:
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


@register_arch("alexnet", params=TorchvisionParams, display="AlexNet", order=50, layered=False,
               summary="AlexNet, Xiao et al.'s variant: batch norm before every ReLU, no bias before BN, no dropout.",
               source=XIAO)
def build_alexnet(params: TorchvisionParams, info: DataShape) -> nn.Module:
    """Xiao et al.'s AlexNet for ``info``'s input shape and class count (small-input stem below 64 px)."""
    channels, h, w = info.input_shape
    return alexnet.AlexNetBN(info.num_classes, in_channels=channels, small_input=min(h, w) < SMALL_INPUT)
