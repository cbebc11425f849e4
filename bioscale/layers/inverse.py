"""Inverse (feedback) layers of target propagation: g_l(h_l; λ_l) = tanh(V_l h_l + c_l).

Each inverse maps a layer's output h_l back to the shape of its input h_{l-1}, and is "parametrised
similarly to the forward computation" (Bartunov et al. 2018, Sec. 2): a dense matrix for a fully-connected
layer, a transposed convolution for a conv layer, and for a locally-connected layer a map with the same
sparse structure as W^T (each input position is reached only from the output positions that read it).
V has the forward weight's shape in the conv and LC cases; it is a separate, independently trained
weight, never the forward W.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioscale.errors import BioscaleError
from bioscale.layers.init import glorot_

if TYPE_CHECKING:
    from bioscale.models.base import Layer


class InverseLayer(nn.Module):
    """Base: ``forward(h) = tanh(pre_activation(h))``, reshaped to the forward layer's input shape."""

    def __init__(self, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        """Per-example shape of what the inverse produces (the forward layer's ``in_shape``)."""

    def pre_activation(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.pre_activation(h))


class InverseLinear(InverseLayer):
    """Dense inverse nn.Linear(out, in) of a fully-connected layer; reads ``h`` flattened.

    ``code_features`` may exceed the forward layer's width: AO-SDTP's output inverse reads [o, z].
    """

    def __init__(self, code_features: int, out_shape: tuple[int, ...]) -> None:
        super().__init__(out_shape)
        self.linear = nn.Linear(code_features, math.prod(out_shape))
        glorot_(self.linear)

    def pre_activation(self, h: Tensor) -> Tensor:
        return self.linear(h.flatten(1)).view(-1, *self.out_shape)


class InverseConv2d(InverseLayer):
    """Transposed-convolution inverse of an ``nn.Conv2d``: V has the conv weight's shape, c is per channel."""

    def __init__(self, conv: nn.Conv2d, in_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape)
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise BioscaleError(
                f"target propagation cannot invert {conv}: only conv layers with groups=1, zero padding "
                "and numeric padding are supported. Build the net with such layers or use a backward rule."
            )
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = nn.Parameter(torch.empty_like(conv.weight))
        self.bias = nn.Parameter(torch.zeros(in_shape[0]))
        glorot_(self)

    def pre_activation(self, h: Tensor) -> Tensor:
        kh, kw = self.weight.shape[-2:]
        out_pad = []
        for dim, k in enumerate((kh, kw)):
            size = (h.shape[2 + dim] - 1) * self.stride[dim] - 2 * self.padding[dim]
            size += self.dilation[dim] * (k - 1) + 1
            out_pad.append(self.out_shape[1 + dim] - size)
        return F.conv_transpose2d(h, self.weight, self.bias, self.stride, self.padding,
                                  tuple(out_pad), 1, self.dilation)


class InverseLC2d(InverseLayer):
    """Inverse of a ``LocallyConnected2d``: the adjoint of the LC op with its own weight V (same shape as W)
    and an untied bias c per input unit, so it has exactly the sparse structure of W^T."""

    def __init__(self, lc: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape)
        self.in_size = tuple(lc.in_size)
        self.stride = lc.stride
        self.padding = lc.padding
        self.weight = nn.Parameter(torch.empty_like(lc.weight))
        self.bias = nn.Parameter(torch.zeros(in_shape))
        glorot_(self)

    def pre_activation(self, h: Tensor) -> Tensor:
        from bioscale.layers.locally_connected import lc2d_transpose

        return lc2d_transpose(h, self.weight, self.in_size, self.stride, self.padding) + self.bias


def _is_locally_connected(op: nn.Module) -> bool:
    try:
        from bioscale.layers.locally_connected import LocallyConnected2d
    except ImportError:
        return False
    return isinstance(op, LocallyConnected2d)


def build_inverse(layer: Layer, code_features: int | None = None) -> InverseLayer:
    """The inverse g of ``layer``: maps its output (per-example ``layer.out_shape``) to ``layer.in_shape``.

    ``code_features`` overrides the input width of a dense inverse (AO-SDTP's output layer reads [o, z]).
    """
    op = layer.op
    in_shape = tuple(layer.in_shape)
    if isinstance(op, nn.Linear):
        return InverseLinear(code_features or op.out_features, in_shape)
    if code_features is not None:
        raise BioscaleError(f"an auxiliary output needs a fully-connected output layer, not {type(op).__name__}")
    if isinstance(op, nn.Conv2d):
        return InverseConv2d(op, in_shape)
    if _is_locally_connected(op):
        return InverseLC2d(op, in_shape)
    raise BioscaleError(
        f"target propagation has no inverse for a {type(op).__name__} layer; it supports nn.Linear, "
        "nn.Conv2d and LocallyConnected2d. Use the fc, lc or conv architecture, or a backward rule."
    )
