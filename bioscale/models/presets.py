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
from typing import TYPE_CHECKING

from pydantic import PositiveInt, field_validator

from bioscale.catalog import register_arch
from bioscale.errors import BioscaleError
from bioscale.lazy import lazy
from bioscale.spec import Strict

if TYPE_CHECKING:
    from bioscale.data.base import DataShape
    from bioscale.models.base import Layer, LayeredNet

nn = lazy("torch.nn")
lc_lib = lazy("bioscale.layers.locally_connected")
models_base = lazy("bioscale.models.base")

BARTUNOV = "Bartunov et al. 2018, Table 3"


class FCParams(Strict):
    hidden: list[PositiveInt] | None = None
    """Hidden layer widths; None is Bartunov et al.'s Table 3 preset for the dataset."""


class LCParams(Strict):
    layers: list[tuple[PositiveInt, PositiveInt, PositiveInt]] | None = None
    """(kernel size, output channels, stride) per locally-connected layer; None is Table 3's preset."""
    hidden: list[PositiveInt] | None = None
    """Fully-connected layers after the LC stack (may be empty); None is Table 3's preset."""

    @field_validator("layers")
    @classmethod
    def _odd_kernels(cls, layers: list[tuple[int, int, int]] | None) -> list[tuple[int, int, int]] | None:
        for i, (k, _, _) in enumerate(layers or []):
            if k % 2 == 0:
                raise ValueError(
                    f"layer {i} has kernel size {k}; these nets zero-pad by k // 2 so that stride 1 keeps "
                    "the shape, which needs an odd kernel size (e.g. 3, 5, 9)"
                )
        return layers


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


def fc_presets(params: FCParams) -> tuple[str, ...] | None:
    """Dataset families ``fc`` can be built for: any, once the widths are given."""
    return None if params.hidden is not None else tuple(FC_HIDDEN)


def lc_presets(params: LCParams) -> tuple[str, ...] | None:
    """Dataset families ``lc``/``conv`` can be built for: those with a Table 3 preset for whatever of
    ``layers`` and ``hidden`` is not given; any family once both are."""
    missing = [table for value, table in ((params.layers, LC_LAYERS), (params.hidden, LC_HIDDEN)) if value is None]
    if not missing:
        return None
    return tuple(f for f in LC_LAYERS if all(f in table for table in missing))


@register_arch("fc", params=FCParams, display="FC", order=10, layered=True, presets=fc_presets,
               summary="Bartunov et al.'s fully-connected nets (Table 3): tanh, Glorot init, softmax.",
               source=BARTUNOV)
def build_fc(params: FCParams, info: DataShape) -> LayeredNet:
    """FC layers with tanh between them and a linear (softmax-in-the-loss) output, Glorot init."""
    hidden = params.hidden if params.hidden is not None else FC_HIDDEN.get(info.family)
    if hidden is None:
        raise BioscaleError(
            f"arch 'fc' has no preset for dataset family {info.family!r} (Table 3 defines it for "
            f"{sorted(FC_HIDDEN)}); give the hidden widths, e.g. arch: {{name: fc, params: {{hidden: [1024]}}}}."
        )
    return models_base.LayeredNet(_fc_stack(info.input_shape, hidden, info.num_classes, []))


@register_arch("lc", params=LCParams, display="LC", order=20, layered=True, presets=lc_presets,
               summary="Bartunov et al.'s locally-connected nets (Table 3).", source=BARTUNOV)
def build_lc(params: LCParams, info: DataShape) -> LayeredNet:
    """Table 3's locally-connected net: LC layers (tanh), then FC layers (tanh), then the linear output."""
    return _build_local(params, info, shared=False)


@register_arch("conv", params=LCParams, display="ConvNet", order=30, layered=True, presets=lc_presets,
               column="LC", row_suffix="ConvNet",
               summary="Table 3's LC net with shared weights (the paper's 'BP ConvNet', reported in the LC column).",
               source=BARTUNOV)
def build_conv(params: LCParams, info: DataShape) -> LayeredNet:
    """The same net as ``build_lc`` with shared weights (nn.Conv2d): the paper's "BP ConvNet"."""
    return _build_local(params, info, shared=True)


def _build_local(params: LCParams, info: DataShape, shared: bool) -> LayeredNet:
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
        out_h, out_w = lc_lib.lc_out_size((h, w), k, stride, k // 2)
        if shared:
            op: nn.Module = nn.Conv2d(c, channels, k, stride=stride, padding=k // 2)
        else:
            op = lc_lib.LocallyConnected2d(c, channels, (h, w), k, stride=stride, padding=k // 2)
        models_base.glorot_(op)
        out_shape = (channels, out_h, out_w)
        layers.append(models_base.Layer(op, nn.Tanh(), shape, out_shape))
        shape = out_shape
    return models_base.LayeredNet(_fc_stack(shape, hidden, info.num_classes, layers))


def _fc_stack(in_shape: tuple[int, ...], hidden: list[int], num_classes: int, layers: list[Layer]
              ) -> list[Layer]:
    """Append tanh FC layers of widths ``hidden`` and a linear output to ``layers``; the first FC layer
    flattens its input when that input is not already a vector."""
    shape = tuple(in_shape)
    widths = [*hidden, num_classes]
    for i, width in enumerate(widths):
        op = nn.Linear(math.prod(shape), width)
        models_base.glorot_(op)
        activation = nn.Tanh() if i < len(widths) - 1 else None
        layers.append(models_base.Layer(op, activation, shape, (width,), flatten=len(shape) > 1))
        shape = (width,)
    return layers
