"""Swap a model's Linear / Conv2d / LocallyConnected2d layers for feedback layers, in place.

The converter works on any ``nn.Module`` (torchvision's ResNet-18 and AlexNet, ``LayeredNet``): it walks the
module tree and replaces each convertible layer by its feedback twin that *shares* the original weight and
bias Parameters (no copy, so nothing already pointing at them goes stale). Everything else (batch norm,
pooling, activations, residual adds) is left alone and keeps backprop.

Only the exact classes are converted: a subclass of ``nn.Linear`` may use its weight outside ``forward``
(``MultiheadAttention.out_proj``), where swapping its forward would silently change nothing; such layers
are listed in the report as skipped instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bioscale.errors import BioscaleError
from bioscale.layers.feedback import (
    FeedbackConv2d,
    FeedbackLinear,
    FeedbackLocallyConnected2d,
    is_feedback_layer,
)
from bioscale.layers.locally_connected import LocallyConnected2d

FeedbackFactory = Callable[[Tensor], nn.Module]
"""Given a layer's weight, build its feedback source (``MatrixFeedback``, ``SignFeedback``, ...)."""

CONVERTIBLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, LocallyConnected2d)


@dataclass
class ConversionReport:
    converted: dict[str, int] = field(default_factory=dict)
    """How many layers of each original class were swapped, e.g. {"Conv2d": 20, "Linear": 1}."""
    names: list[str] = field(default_factory=list)
    """Qualified names of the converted layers, in module order."""
    kept_bp: list[str] = field(default_factory=list)
    """Convertible layers left on plain backprop because the caller asked (e.g. the output layer)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Layers that look convertible but were not touched, with the reason."""

    @property
    def total(self) -> int:
        return sum(self.converted.values())

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.converted.items())) or "nothing"
        text = f"converted {counts}"
        if self.kept_bp:
            text += f"; kept on backprop: {', '.join(self.kept_bp)}"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{k} ({v})" for k, v in self.skipped.items())
        return text


def _twin(module: nn.Module, feedback: nn.Module) -> nn.Module:
    """The feedback layer with ``module``'s configuration, built on the meta device (no allocation)."""
    with torch.device("meta"):
        if type(module) is nn.Linear:
            new: nn.Module = FeedbackLinear(module.in_features, module.out_features, module.bias is not None,
                                            feedback=nn.Identity())
        elif type(module) is nn.Conv2d:
            new = FeedbackConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                 module.padding, module.dilation, module.groups, module.bias is not None,
                                 module.padding_mode, feedback=nn.Identity())
        else:
            assert isinstance(module, LocallyConnected2d)
            new = FeedbackLocallyConnected2d(module.in_channels, module.out_channels, module.in_size,
                                             module.kernel_size, module.stride, module.padding,
                                             module.bias is not None, feedback=nn.Identity())
    new.weight = module.weight
    new.bias = module.bias
    new.feedback = feedback
    new.train(module.training)
    return new


def convert_to_feedback(model: nn.Module, make_feedback: FeedbackFactory,
                        keep_bp: Iterable[nn.Module] = ()) -> ConversionReport:
    """Replace, in ``model``, every Linear/Conv2d/LocallyConnected2d not in ``keep_bp`` by a feedback layer
    whose B is ``make_feedback(weight)``; return what was converted. A container in ``keep_bp`` keeps every
    layer inside it. Layers that are already feedback layers are left as they are (converting twice is a
    no-op)."""
    if type(model) in CONVERTIBLE:
        raise BioscaleError(
            f"cannot convert a bare {type(model).__name__} in place; wrap it in a container "
            "(e.g. nn.Sequential(layer)) and convert that."
        )
    keep = {id(m) for kept in keep_bp for m in kept.modules()}
    report = ConversionReport()
    done: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name or is_feedback_layer(module) or not isinstance(module, CONVERTIBLE):
            continue
        if type(module) not in CONVERTIBLE:
            report.skipped[name] = f"{type(module).__name__} is a subclass; its weight may be used " \
                                   "outside forward"
            continue
        if id(module) in keep:
            report.kept_bp.append(name)
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if id(module) not in done:
            done[id(module)] = _twin(module, make_feedback(module.weight))
            kind = type(module).__name__
            report.converted[kind] = report.converted.get(kind, 0) + 1
            report.names.append(name)
        setattr(parent, child, done[id(module)])
    return report
