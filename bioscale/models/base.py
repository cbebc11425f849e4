"""A sequential stack of layers, the structure target propagation and DFA need."""

from __future__ import annotations

from torch import Tensor, nn

from bioscale.layers.init import glorot_

__all__ = ["Layer", "LayeredNet", "glorot_", "output_module"]


class Layer(nn.Module):
    """h_l = activation(op(h_{l-1})), flattening the input first when ``op`` is fully connected.

    ``in_shape``/``out_shape`` are per-example shapes, so inverse layers can be built without a forward pass.
    """

    def __init__(
        self,
        op: nn.Module,
        activation: nn.Module | None,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.op = op
        self.activation = activation if activation is not None else nn.Identity()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.flatten = flatten

    def pre_activation(self, x: Tensor) -> Tensor:
        if self.flatten:
            x = x.flatten(1)
        return self.op(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_activation(x))


class LayeredNet(nn.Module):
    """h_0 = x, h_l = layers[l-1](h_{l-1}); the last layer returns logits (softmax lives in the loss)."""

    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """[h_1, ..., h_L]: every layer's output, the last one being the logits."""
        hs = []
        for layer in self.layers:
            x = layer(x)
            hs.append(x)
        return hs

    @property
    def output_layer(self) -> Layer:
        return self.layers[-1]  # type: ignore[return-value]


def output_module(model: nn.Module) -> nn.Module:
    """The layer that produces the logits: a LayeredNet's last op, what the model's ``output_layers()`` returns
    (a container when there are several, e.g. RetinaNet's two head output convs), else the last Linear."""
    if isinstance(model, LayeredNet):
        return model.output_layer.op
    named = getattr(model, "output_layers", None)
    if callable(named):
        return named()
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear) or (hasattr(module, "feedback_weight") and module.weight.dim() == 2):
            last = module
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear output layer")
    return last
