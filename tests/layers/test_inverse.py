"""Inverse layers: g(h) = tanh(V h + c) with the structure of W^T, mapping h_l back to h_{l-1}'s shape."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioscale.errors import BioscaleError
from bioscale.layers.inverse import InverseConv2d, InverseLC2d, InverseLinear, build_inverse
from bioscale.models.base import Layer


def _adjoint(forward: Callable[[Tensor, Tensor], Tensor], v: Tensor, y_shape: tuple[int, ...],
             x_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The adjoint A^T y of the linear map x -> forward(x, v), by differentiating <A x, y> w.r.t. x."""
    x = torch.zeros(x_shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(y_shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((forward(x, v) * y).sum(), x)
    return y, grad


def test_linear_inverse_is_tanh_of_dense_map_reshaped_to_input_shape() -> None:
    torch.manual_seed(0)
    layer = Layer(nn.Linear(12, 5), nn.Tanh(), (3, 2, 2), (5,), flatten=True)
    g = build_inverse(layer)
    assert isinstance(g, InverseLinear)
    h = torch.randn(4, 5)
    v, c = g.linear.weight, g.linear.bias
    assert v.shape == (12, 5)
    expected = torch.tanh(h @ v.T + c).view(4, 3, 2, 2)
    torch.testing.assert_close(g(h), expected)


def test_linear_inverse_reads_a_wider_code_for_auxiliary_outputs() -> None:
    layer = Layer(nn.Linear(6, 3), None, (6,), (3,))
    g = build_inverse(layer, code_features=3 + 7)
    assert g(torch.randn(2, 10)).shape == (2, 6)


def test_linear_inverse_starts_glorot_with_zero_bias() -> None:
    torch.manual_seed(0)
    g = build_inverse(Layer(nn.Linear(300, 200), nn.Tanh(), (300,), (200,)))
    bound = (6 / 500) ** 0.5
    w = g.linear.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.count_nonzero(g.linear.bias) == 0


@pytest.mark.parametrize(("size", "k", "stride", "pad"), [(7, 3, 2, 1), (8, 3, 2, 1), (6, 5, 1, 2), (9, 3, 3, 0)])
def test_conv_inverse_is_the_adjoint_of_the_conv_with_its_own_weight(size: int, k: int, stride: int,
                                                                     pad: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, k, stride=stride, padding=pad)
    out = F.conv2d(torch.zeros(1, 3, size, size), conv.weight, stride=stride, padding=pad).shape[2:]
    layer = Layer(conv, nn.Tanh(), (3, size, size), (4, *out))
    g = build_inverse(layer).double()
    assert isinstance(g, InverseConv2d)
    assert g.weight.shape == conv.weight.shape and g.bias.shape == (3,)
    assert not torch.equal(g.weight.float(), conv.weight)  # its own weight V, not W
    y, adj = _adjoint(lambda x, v: F.conv2d(x, v, stride=stride, padding=pad), g.weight.detach(),
                      (2, 4, *out), (2, 3, size, size))
    expected = torch.tanh(adj + g.bias.detach().view(1, 3, 1, 1))
    torch.testing.assert_close(g(y), expected)


def test_lc_inverse_has_the_sparse_structure_of_w_transpose() -> None:
    from bioscale.layers.locally_connected import LocallyConnected2d, lc2d

    torch.manual_seed(0)
    lc = LocallyConnected2d(2, 3, (7, 7), 3, stride=2, padding=1)
    oh, ow = lc.out_size
    g = build_inverse(Layer(lc, nn.Tanh(), (2, 7, 7), (3, oh, ow))).double()
    assert isinstance(g, InverseLC2d)
    assert g.weight.shape == lc.weight.shape and g.bias.shape == (2, 7, 7)
    with torch.no_grad():
        g.bias.normal_()
    y, adj = _adjoint(lambda x, v: lc2d(x, v, None, 2, 1), g.weight.detach(), (2, 3, oh, ow), (2, 2, 7, 7))
    torch.testing.assert_close(g(y), torch.tanh(adj + g.bias.detach()))
    # only the output positions that read an input position reach it: position (0, 0) of the input is read
    # by output (0, 0) alone (kernel 3, stride 2, padding 1), so a signal elsewhere never reaches it
    y = torch.zeros(1, 3, oh, ow, dtype=torch.float64)
    y[0, :, 2, 2] = 1.0
    pre = g.pre_activation(y) - g.bias
    assert torch.all(pre[0, :, 0, 0] == 0)
    assert torch.any(pre[0, :, 4, 4] != 0)


def test_lc_inverse_trains_both_weight_and_bias() -> None:
    from bioscale.layers.locally_connected import LocallyConnected2d

    lc = LocallyConnected2d(2, 3, (6, 6), 3, stride=2, padding=1)
    g = build_inverse(Layer(lc, nn.Tanh(), (2, 6, 6), (3, *lc.out_size)))
    g(torch.randn(2, 3, *lc.out_size)).square().sum().backward()
    assert g.weight.grad is not None and g.bias.grad is not None


def test_unsupported_layer_is_a_clear_error() -> None:
    layer = Layer(nn.Bilinear(2, 2, 2), None, (2,), (2,))
    with pytest.raises(BioscaleError, match="no inverse"):
        build_inverse(layer)


def test_grouped_conv_is_refused() -> None:
    conv = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(BioscaleError, match="groups=1"):
        build_inverse(Layer(conv, nn.Tanh(), (4, 6, 6), (4, 4, 4)))
