"""Bartunov et al.'s nets (Table 3), chosen by the dataset family, overridable from the grid."""

from __future__ import annotations

import math

from torch import nn

from bioscale.catalog.archs import FCParams
from bioscale.data.base import DataInfo
from bioscale.models.base import Layer, LayeredNet, glorot_

FC_HIDDEN = {"mnist": [256] * 5, "cifar10": [1024] * 3}


def build_fc(params: FCParams, info: DataInfo) -> LayeredNet:
    """FC layers with tanh between them and a linear (softmax-in-the-loss) output, Glorot init."""
    hidden = params.hidden if params.hidden is not None else FC_HIDDEN.get(info.family)
    if hidden is None:
        raise ValueError(f"no FC preset for dataset family {info.family!r}; give arch.params.hidden")
    widths = [math.prod(info.input_shape), *hidden]
    layers: list[Layer] = []
    in_shape: tuple[int, ...] = info.input_shape
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        op = nn.Linear(a, b)
        glorot_(op)
        layers.append(Layer(op, nn.Tanh(), in_shape, (b,), flatten=i == 0))
        in_shape = (b,)
    out = nn.Linear(widths[-1], info.num_classes)
    glorot_(out)
    layers.append(Layer(out, None, in_shape, (info.num_classes,), flatten=len(layers) == 0))
    return LayeredNet(layers)
