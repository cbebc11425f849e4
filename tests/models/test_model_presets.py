"""Bartunov et al.'s FC / LC / conv nets against Table 3, with the arithmetic written out here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bioscale.data.base import DataShape
from bioscale.errors import BioscaleError
from bioscale.layers.locally_connected import LocallyConnected2d
from bioscale.models.base import LayeredNet
from bioscale.models.presets import FCParams, LCParams, build_conv, build_fc, build_lc

MNIST = DataShape("mnist", (1, 28, 28), 10, 60000, 10000)
CIFAR = DataShape("cifar10", (3, 32, 32), 10, 50000, 10000)
IMAGENET = DataShape("imagenet", (3, 224, 224), 1000, 1281167, 50000)
DIGITS = DataShape("mnist", (1, 8, 8), 10, 1437, 360)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(build, params, info):  # big nets: shapes and counts without allocating
    with torch.device("meta"):
        return build(params, info)


# ---- fully connected: FC widths w_0 = C*H*W, ..., softmax; params = sum w_i * w_{i+1} + w_{i+1}

def test_fc_mnist_table3():
    # 784 -> 256 x5 -> 10
    expected = (784 * 256 + 256) + 4 * (256 * 256 + 256) + (256 * 10 + 10)
    assert expected == 466_698
    model = build_fc(FCParams(), MNIST)
    assert n_params(model) == expected
    assert [la.out_shape for la in model.layers] == [(256,)] * 5 + [(10,)]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_fc_cifar_table3():
    # 3072 -> 1024 x3 -> 10
    expected = (3072 * 1024 + 1024) + 2 * (1024 * 1024 + 1024) + (1024 * 10 + 10)
    assert expected == 5_256_202
    assert n_params(build_fc(FCParams(), CIFAR)) == expected


def test_fc_structure_tanh_between_layers_linear_output_glorot():
    model = build_fc(FCParams(), MNIST)
    assert isinstance(model, LayeredNet)
    *hidden, out = model.layers
    assert all(isinstance(la.activation, nn.Tanh) for la in hidden)
    assert isinstance(out.activation, nn.Identity)  # softmax is in the loss
    assert model.layers[0].flatten and model.layers[0].in_shape == (1, 28, 28)
    for la in model.layers:
        fan_in, fan_out = la.op.in_features, la.op.out_features
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = la.op.weight
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert torch.all(la.op.bias == 0)


def test_fc_override_and_missing_preset():
    model = build_fc(FCParams(hidden=[7, 5]), IMAGENET)
    assert n_params(model) == (3 * 224 * 224 * 7 + 7) + (7 * 5 + 5) + (5 * 1000 + 1000)
    with pytest.raises(BioscaleError, match="hidden"):
        build_fc(FCParams(), IMAGENET)


# ---- locally connected: an (k, C_out, s) layer on (C_in, H, W) with padding k//2 has ceil(H/s) x ceil(W/s)
# outputs; weights out_h*out_w*C_out*C_in*k*k, biases C_out*out_h*out_w (untied, one per output unit).

def lc_count(shape, spec, hidden, classes, shared=False):
    """Independent count from Table 3: returns (total params, per-layer output shapes)."""
    c, h, w = shape
    total, shapes = 0, []
    for k, c_out, s in spec:
        h, w = -(-h // s), -(-w // s)  # ceil
        total += (c_out * c * k * k + c_out) if shared else (h * w * c_out * c * k * k + c_out * h * w)
        c = c_out
        shapes.append((c, h, w))
    width = c * h * w
    for n in [*hidden, classes]:
        total += width * n + n
        width = n
        shapes.append((n,))
    return total, shapes


def test_lc_mnist_table3():
    # (3x3, 32, 2) -> (3x3, 64, 2) -> FC 1024 -> softmax 10 on 1x28x28: 28 -> 14 -> 7
    expected = (14 * 14 * 32 * 1 * 9 + 32 * 14 * 14) + (7 * 7 * 64 * 32 * 9 + 64 * 7 * 7) \
        + (64 * 7 * 7 * 1024 + 1024) + (1024 * 10 + 10)
    assert expected == 4_191_562
    model = build_lc(LCParams(), MNIST)
    assert n_params(model) == expected
    assert [la.out_shape for la in model.layers] == [(32, 14, 14), (64, 7, 7), (1024,), (10,)]
    assert [la.in_shape for la in model.layers] == [(1, 28, 28), (32, 14, 14), (64, 7, 7), (1024,)]
    assert lc_count((1, 28, 28), [(3, 32, 2), (3, 64, 2)], [1024], 10)[0] == expected
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lc_cifar_table3():
    # (5x5, 64, 2) -> (5x5, 128, 2) -> (3x3, 256, 1) -> FC 1024 -> softmax 10 on 3x32x32: 32 -> 16 -> 8 -> 8
    expected = (16 * 16 * 64 * 3 * 25 + 64 * 16 * 16) + (8 * 8 * 128 * 64 * 25 + 128 * 8 * 8) \
        + (8 * 8 * 256 * 128 * 9 + 256 * 8 * 8) + (256 * 8 * 8 * 1024 + 1024) + (1024 * 10 + 10)
    assert expected == 50_039_818
    model = build_lc(LCParams(), CIFAR)
    assert n_params(model) == expected
    assert [la.out_shape for la in model.layers] == [(64, 16, 16), (128, 8, 8), (256, 8, 8), (1024,), (10,)]


def test_lc_imagenet_table3():
    # 224 -(9,48,4)-> 56 -(3,48,2)-> 28 -(5,96,1)-> 28 -(3,96,2)-> 14 -(3,192,1)-> 14 -(3,192,2)-> 7
    # -(3,384,1)-> 7 -> softmax 1000 directly (no hidden FC)
    expected = (56 * 56 * 48 * 3 * 81 + 48 * 56 * 56) + (28 * 28 * 48 * 48 * 9 + 48 * 28 * 28) \
        + (28 * 28 * 96 * 48 * 25 + 96 * 28 * 28) + (14 * 14 * 96 * 96 * 9 + 96 * 14 * 14) \
        + (14 * 14 * 192 * 96 * 9 + 192 * 14 * 14) + (7 * 7 * 192 * 192 * 9 + 192 * 7 * 7) \
        + (7 * 7 * 384 * 192 * 9 + 384 * 7 * 7) + (384 * 7 * 7 * 1000 + 1000)
    assert expected == 259_859_368
    model = on_meta(build_lc, LCParams(), IMAGENET)
    assert n_params(model) == expected
    assert [la.out_shape for la in model.layers] == [
        (48, 56, 56), (48, 28, 28), (96, 28, 28), (96, 14, 14), (192, 14, 14), (192, 7, 7), (384, 7, 7),
        (1000,)]
    assert model.layers[-1].flatten and model.layers[-1].in_shape == (384, 7, 7)


def test_conv_is_the_same_net_with_shared_weights():
    # MNIST conv: filters 32*1*9 + 32, 64*32*9 + 64, then the same FC layers
    expected = (32 * 9 + 32) + (64 * 32 * 9 + 64) + (3136 * 1024 + 1024) + (1024 * 10 + 10)
    model = build_conv(LCParams(), MNIST)
    assert n_params(model) == expected == lc_count((1, 28, 28), [(3, 32, 2), (3, 64, 2)], [1024], 10, True)[0]
    lc = build_lc(LCParams(), MNIST)
    assert [la.out_shape for la in model.layers] == [la.out_shape for la in lc.layers]
    convs = [la.op for la in model.layers[:2]]
    assert all(type(op) is nn.Conv2d for op in convs)
    assert [(op.kernel_size, op.stride, op.padding) for op in convs] == [((3, 3), (2, 2), (1, 1))] * 2
    cifar = on_meta(build_conv, LCParams(), CIFAR)
    assert n_params(cifar) == lc_count((3, 32, 32), [(5, 64, 2), (5, 128, 2), (3, 256, 1)], [1024], 10, True)[0]


def test_lc_layers_are_locally_connected_with_same_padding_tanh_and_glorot():
    model = build_lc(LCParams(), CIFAR)
    lcs = [la for la in model.layers if isinstance(la.op, LocallyConnected2d)]
    assert len(lcs) == 3
    for la, (k, _, s) in zip(lcs, [(5, 64, 2), (5, 128, 2), (3, 256, 1)], strict=True):
        assert la.op.kernel_size == (k, k) and la.op.stride == (s, s) and la.op.padding == (k // 2, k // 2)
        assert isinstance(la.activation, nn.Tanh)
        c_out, c_in = la.op.out_channels, la.op.in_channels
        bound = math.sqrt(6 / (c_in * k * k + c_out * k * k))  # Glorot fans of one filter
        assert la.op.weight.abs().max() <= bound and la.op.weight.abs().max() > 0.9 * bound
        assert torch.all(la.op.bias == 0)
    # stride 1 keeps the shape (the paper's padding rule)
    assert lcs[2].in_shape[1:] == lcs[2].out_shape[1:] == (8, 8)
    assert isinstance(model.layers[-1].activation, nn.Identity)


@pytest.mark.parametrize("family", ["mnist", "cifar10", "imagenet"])
def test_presets_adapt_to_small_inputs(family):
    info = DataShape(family, (1, 8, 8), 3, 10, 10)
    spec = {"mnist": [(3, 32, 2), (3, 64, 2)], "cifar10": [(5, 64, 2), (5, 128, 2), (3, 256, 1)],
            "imagenet": [(9, 48, 4), (3, 48, 2), (5, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 2),
                         (3, 384, 1)]}[family]
    hidden = {"mnist": [1024], "cifar10": [1024], "imagenet": []}[family]
    total, shapes = lc_count((1, 8, 8), spec, hidden, 3)
    model = build_lc(LCParams(), info)
    assert n_params(model) == total
    assert [la.out_shape for la in model.layers] == shapes
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_lc_overrides_and_errors():
    params = LCParams(layers=[(3, 4, 1), (5, 6, 3)], hidden=[])
    total, shapes = lc_count((1, 8, 8), [(3, 4, 1), (5, 6, 3)], [], 10)
    model = build_lc(params, DIGITS)
    assert n_params(model) == total and [la.out_shape for la in model.layers] == shapes == [
        (4, 8, 8), (6, 3, 3), (10,)]
    with pytest.raises(BioscaleError, match="no preset"):
        build_lc(LCParams(), DataShape("coco", (3, 64, 64), 80, 1, 1))
    with pytest.raises(BioscaleError, match="odd"):
        build_lc(LCParams.model_construct(layers=[(4, 4, 1)], hidden=[]), DIGITS)
    with pytest.raises(ValueError, match="odd kernel"):
        LCParams(layers=[(4, 4, 1)])
