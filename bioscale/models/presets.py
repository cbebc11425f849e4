"""Bartunov et al.'s nets (Table 3), chosen by the dataset family, overridable from the grid.

All of them are ``LayeredNet``s (so target propagation and DFA can run them): tanh between layers, Glorot
init with zero biases, a linear output layer (the softmax lives in the cross-entropy loss).

Locally-connected (and conv) layers use zero padding ``k // 2``: at stride 1 this keeps the spatial shape,
as the paper says. At stride s it gives ceil(H / s) outputs, the same size as TensorFlow's "SAME" padding
(the paper's implementation), but padded symmetrically, so the windows sit up to one pixel off TF's (TF puts
the odd pixel of padding at the bottom/right). Kernels must be odd for "same" padding to exist.
Datasets of other shapes (8x8 digits, synthetic) get their family's preset with the input and output sizes
adapted; the output sizes are computed layer by layer and recorded as each ``Layer``'s ``out_shape``.
"""

from __future__ import annotations

import math

from torch import nn

from bioscale.catalog.archs import FCParams, LCParams
from bioscale.data.base import DataInfo
from bioscale.errors import BioscaleError
from bioscale.layers.locally_connected import LocallyConnected2d, lc_out_size
from bioscale.models.base import Layer, LayeredNet, glorot_

FC_HIDDEN = {"mnist": [256] * 5, "cifar10": [1024] * 3}
"""Table 3, fully-connected column (ImageNet has no FC net)."""

LC_LAYERS: dict[str, list[tuple[int, int, int]]] = {
    "mnist": [(3, 32, 2), (3, 64, 2)],
    "cifar10": [(5, 64, 2), (5, 128, 2), (3, 256, 1)],
    "imagenet": [(9, 48, 4), (3, 48, 2), (5, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 2), (3, 384, 1)],
}
"""Table 3, locally-connected column: (kernel size, output channels, stride); CIFAR's (3x3, 256) is stride 1."""

LC_HIDDEN: dict[str, list[int]] = {"mnist": [1024], "cifar10": [1024], "imagenet": []}
"""Fully-connected layers between the LC stack and the softmax (none for ImageNet: the last LC layer feeds
the softmax directly)."""


def build_fc(params: FCParams, info: DataInfo) -> LayeredNet:
    """FC layers with tanh between them and a linear (softmax-in-the-loss) output, Glorot init."""
    hidden = params.hidden if params.hidden is not None else FC_HIDDEN.get(info.family)
    if hidden is None:
        raise BioscaleError(
            f"arch 'fc' has no preset for dataset family {info.family!r} (Table 3 defines it for "
            f"{sorted(FC_HIDDEN)}); give the hidden widths, e.g. arch: {{name: fc, params: {{hidden: [1024]}}}}."
        )
    return LayeredNet(_fc_stack(info.input_shape, hidden, info.num_classes, []))


def build_lc(params: LCParams, info: DataInfo) -> LayeredNet:
    """Table 3's locally-connected net: LC layers (tanh), then FC layers (tanh), then the linear output."""
    return _build_local(params, info, shared=False)


def build_conv(params: LCParams, info: DataInfo) -> LayeredNet:
    """The same net as ``build_lc`` with shared weights (nn.Conv2d): the paper's "BP ConvNet"."""
    return _build_local(params, info, shared=True)


def _build_local(params: LCParams, info: DataInfo, shared: bool) -> LayeredNet:
    name = "conv" if shared else "lc"
    spec = params.layers if params.layers is not None else LC_LAYERS.get(info.family)
    hidden = params.hidden if params.hidden is not None else LC_HIDDEN.get(info.family)
    if spec is None or hidden is None:
        raise BioscaleError(
            f"arch {name!r} has no preset for dataset family {info.family!r} (Table 3 defines it for "
            f"{sorted(LC_LAYERS)}); give both arch.params.layers (a list of [kernel, channels, stride]) "
            "and arch.params.hidden (a list of FC widths, may be empty)."
        )
    layers: list[Layer] = []
    shape: tuple[int, ...] = tuple(info.input_shape)
    for i, (k, channels, stride) in enumerate(spec):
        if k % 2 == 0:
            raise BioscaleError(
                f"arch {name!r} layer {i}: kernel size {k} is even, but these nets use zero padding k // 2 "
                "that keeps the shape at stride 1, which only exists for odd kernels; use an odd kernel size."
            )
        c, h, w = shape
        out_h, out_w = lc_out_size((h, w), k, stride, k // 2)
        if shared:
            op: nn.Module = nn.Conv2d(c, channels, k, stride=stride, padding=k // 2)
        else:
            op = LocallyConnected2d(c, channels, (h, w), k, stride=stride, padding=k // 2)
        glorot_(op)
        out_shape = (channels, out_h, out_w)
        layers.append(Layer(op, nn.Tanh(), shape, out_shape))
        shape = out_shape
    return LayeredNet(_fc_stack(shape, hidden, info.num_classes, layers))


def _fc_stack(in_shape: tuple[int, ...], hidden: list[int], num_classes: int, layers: list[Layer]
              ) -> list[Layer]:
    """Append tanh FC layers of widths ``hidden`` and a linear output to ``layers``; the first FC layer
    flattens its input when that input is not already a vector."""
    shape = tuple(in_shape)
    widths = [*hidden, num_classes]
    for i, width in enumerate(widths):
        op = nn.Linear(math.prod(shape), width)
        glorot_(op)
        activation = nn.Tanh() if i < len(widths) - 1 else None
        layers.append(Layer(op, activation, shape, (width,), flatten=len(shape) > 1))
        shape = (width,)
    return layers
