"""lc2d / lc2d_transpose / LocallyConnected2d against references computed independently here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioscale.errors import BioscaleError
from bioscale.layers.locally_connected import LocallyConnected2d, lc2d, lc2d_transpose, lc_out_size

# (in_size, kernel, stride, padding): odd/even kernels, strides that leave uncovered border pixels,
# anisotropic everything.
CASES = [
    ((7, 6), 3, 1, 1),
    ((7, 6), 3, 2, 1),
    ((7, 6), 3, 2, 0),
    ((8, 9), 5, 3, 2),
    ((7, 6), (3, 2), (1, 2), (0, 1)),
    ((5, 5), 1, 1, 0),
]


def naive_lc(x, weight, bias, stride, padding):
    """Per-position loop straight from the definition: out[n,o,i,j] = <W[i,j,o], xpad patch at (i,j)>."""
    oh, ow, o, _, kh, kw = weight.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    xp = F.pad(x, (pw, pw, ph, ph))
    out = x.new_zeros(x.shape[0], o, oh, ow)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # (N, C, kh, kw)
            out[:, :, i, j] = torch.einsum("ncuv,ocuv->no", patch, weight[i, j])
    if bias is not None:
        out = out + bias
    return out


def naive_grad_input(grad_out, mat, in_shape, stride, padding):
    """dL/dx[n,c,y,x] = sum over positions whose patch covers (y,x) of mat[i,j,o,c,u,v] * g[n,o,i,j]."""
    oh, ow, _, c, kh, kw = mat.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    n, _, h, w = in_shape
    gp = grad_out.new_zeros(n, c, h + 2 * ph, w + 2 * pw)
    for i in range(oh):
        for j in range(ow):
            gp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += torch.einsum(
                "no,ocuv->ncuv", grad_out[:, :, i, j], mat[i, j])
    return gp[:, :, ph:ph + h, pw:pw + w]


def naive_grad_weight(grad_out, x, weight_shape, stride, padding):
    oh, ow, _, _, kh, kw = weight_shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    xp = F.pad(x, (pw, pw, ph, ph))
    gw = x.new_zeros(weight_shape)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            gw[i, j] = torch.einsum("no,ncuv->ocuv", grad_out[:, :, i, j], patch)
    return gw


def make(in_size, k, s, p, dtype=torch.float64, n=3, c=2, o=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = LocallyConnected2d(c, o, in_size, k, s, p).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=dtype))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=dtype))
    x = torch.randn(n, c, *layer.in_size, generator=g, dtype=dtype, requires_grad=True)
    return layer, x


@pytest.mark.parametrize(("in_size", "k", "s", "p"), CASES)
def test_shared_filters_equal_conv2d_outputs_and_gradients(in_size, k, s, p):
    layer, x = make(in_size, k, s, p, dtype=torch.float32)
    filt = torch.randn(layer.out_channels, layer.in_channels, *layer.kernel_size)
    b = torch.randn(layer.out_channels)
    with torch.no_grad():
        layer.weight.copy_(filt.expand_as(layer.weight))
        layer.bias.copy_(b[:, None, None].expand_as(layer.bias))
    filt.requires_grad_(True)
    b.requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)

    y = layer(x)
    y_ref = F.conv2d(x2, filt, b, layer.stride, layer.padding)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)

    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    # conv's shared-filter gradient is the sum over positions of the LC per-position gradients
    torch.testing.assert_close(layer.weight.grad.sum((0, 1)), filt.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(layer.bias.grad.sum((1, 2)), b.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("in_size", "k", "s", "p"), CASES)
def test_random_filters_equal_naive_reference(in_size, k, s, p):
    layer, x = make(in_size, k, s, p)
    y = layer(x)
    torch.testing.assert_close(y, naive_lc(x, layer.weight, layer.bias, s, p), atol=1e-10, rtol=1e-10)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, naive_grad_input(g, layer.weight.detach(), x.shape, s, p))
    torch.testing.assert_close(layer.weight.grad, naive_grad_weight(g, x.detach(), layer.weight.shape, s, p))
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


@pytest.mark.parametrize(("in_size", "k", "s", "p"), CASES)
def test_backward_weight_replaces_w_in_input_gradient_only(in_size, k, s, p):
    layer, x = make(in_size, k, s, p)
    B = torch.randn(layer.weight.shape, dtype=torch.float64, requires_grad=True)
    y = lc2d(x, layer.weight, layer.bias, s, p, backward_weight=B)
    torch.testing.assert_close(y, naive_lc(x, layer.weight, layer.bias, s, p))  # forward uses W
    g = torch.randn_like(y)
    y.backward(g)
    gi_b = naive_grad_input(g, B.detach(), x.shape, s, p)
    gi_w = naive_grad_input(g, layer.weight.detach(), x.shape, s, p)
    torch.testing.assert_close(x.grad, gi_b)
    assert (x.grad - gi_w).abs().max() > 1e-3  # it is not backprop's signal
    torch.testing.assert_close(layer.weight.grad, naive_grad_weight(g, x.detach(), layer.weight.shape, s, p))
    assert B.grad is None


@pytest.mark.parametrize(("in_size", "k", "s", "p"), CASES[:5])
def test_gradcheck_float64(in_size, k, s, p):
    layer, x = make(in_size, k, s, p, n=2, o=2)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x_, w_, b_: lc2d(x_, w_, b_, s, p), (x, w, b))
    assert torch.autograd.gradcheck(lambda x_, w_: lc2d(x_, w_, None, s, p), (x, w))


def test_gradcheck_with_backward_weight_checks_the_true_weight_gradient_and_the_b_input_gradient():
    layer, x = make((6, 5), 3, 2, 1, n=2)
    w = layer.weight.detach().clone().requires_grad_(True)
    B = torch.randn_like(w)
    # the weight gradient stays exact even with B in the backward pass
    assert torch.autograd.gradcheck(lambda w_: lc2d(x.detach(), w_, None, 2, 1, backward_weight=B), (w,))
    # the input gradient is exact for a net whose weight *is* B (backward_weight=B -> J^T computed with B)
    assert torch.autograd.gradcheck(lambda x_: lc2d(x_, B, None, 2, 1, backward_weight=B), (x,))
    # ... and with W in the forward, the VJP is B's, not W's: compare with the independent formula
    y = lc2d(x, w, None, 2, 1, backward_weight=B)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, naive_grad_input(g, B, x.shape, 2, 1))


@pytest.mark.parametrize(("in_size", "k", "s", "p"), CASES)
def test_transpose_is_the_adjoint_and_the_input_gradient(in_size, k, s, p):
    layer, x = make(in_size, k, s, p)
    y = torch.randn(x.shape[0], layer.out_channels, *layer.out_size, dtype=torch.float64)
    xt = lc2d_transpose(y, layer.weight, in_size, s, p)
    assert xt.shape == x.shape
    lhs = (lc2d(x, layer.weight, None, s, p) * y).sum()
    rhs = (x * xt).sum()
    torch.testing.assert_close(lhs, rhs)
    torch.testing.assert_close(xt, naive_grad_input(y, layer.weight.detach(), x.shape, s, p))


def test_transpose_gradcheck_wrt_y_and_weight():
    layer, _ = make((6, 5), 3, 2, 1, n=2, o=3)
    w = layer.weight.detach().clone().requires_grad_(True)
    y = torch.randn(2, layer.out_channels, *layer.out_size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y_, w_: lc2d_transpose(y_, w_, (6, 5), 2, 1), (y, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_runs_and_is_close(dtype):
    layer, x = make((8, 8), 3, 1, 1, dtype=torch.float32)
    ref = layer(x)
    layer_l = LocallyConnected2d(2, 4, (8, 8), 3, 1, 1).to(dtype)
    layer_l.load_state_dict({k: v.to(dtype) for k, v in layer.state_dict().items()})
    xl = x.detach().to(dtype).requires_grad_(True)
    y = layer_l(xl)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert xl.grad.dtype == dtype and layer_l.weight.grad.dtype == dtype
    torch.testing.assert_close(y.float(), ref, atol=0.15, rtol=0.05)


def test_autocast_bfloat16_keeps_float32_parameter_gradients():
    layer, x = make((8, 8), 3, 1, 1, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_module_shapes_and_out_size():
    m = LocallyConnected2d(3, 48, (224, 224), 9, stride=4, padding=4, bias=True)
    assert m.out_size == (56, 56) == lc_out_size(224, 9, 4, 4)
    assert m.weight.shape == (56, 56, 48, 3, 9, 9)
    assert m.bias.shape == (48, 56, 56)
    assert LocallyConnected2d(1, 2, (5, 5), 3, bias=False).bias is None


def test_subclass_can_pass_its_own_backward_weight():
    class Feedback(LocallyConnected2d):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.register_buffer("feedback_weight", torch.randn_like(self.weight))

        def forward(self, x):
            return self._lc(x, backward_weight=self.feedback_weight)

    m = Feedback(2, 3, (5, 5), 3, 1, 1).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, naive_grad_input(g, m.feedback_weight, x.shape, 1, 1))


def test_bad_inputs_raise_clear_errors():
    m = LocallyConnected2d(2, 3, (5, 5), 3, 1, 1)
    with pytest.raises(BioscaleError, match="only accepts the input size"):
        m(torch.randn(1, 2, 6, 6))
    with pytest.raises(BioscaleError, match="in_channels"):
        m(torch.randn(1, 3, 5, 5))
    with pytest.raises(BioscaleError, match="does not fit"):
        LocallyConnected2d(1, 1, (2, 2), 5)
    with pytest.raises(BioscaleError, match="backward_weight"):
        lc2d(torch.randn(1, 2, 5, 5), m.weight, None, 1, 1, backward_weight=torch.randn(3))
    with pytest.raises(BioscaleError, match="in_size"):
        lc2d_transpose(torch.randn(1, 3, 5, 5), m.weight, (7, 7), 1, 1)


def test_strided_inputs_and_expanded_gradients():
    layer, x = make((7, 6), 3, 2, 1)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    y = layer(x_cl)
    torch.testing.assert_close(y, naive_lc(x.detach(), layer.weight, layer.bias, 2, 1))
    y.sum().backward()  # grad_output is an expanded (zero-stride) tensor
    torch.testing.assert_close(x_cl.grad, naive_grad_input(torch.ones_like(y), layer.weight.detach(), x.shape, 2, 1))


def test_no_input_gradient_when_the_input_needs_none():
    layer, x = make((6, 6), 3, 1, 1)
    y = layer(x.detach())
    y.sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize(("in_size", "k", "s", "p"), CASES[:5])
def test_chunked_rows_give_the_same_results(monkeypatch, in_size, k, s, p):
    import bioscale.layers.locally_connected as lc_mod

    monkeypatch.setattr(lc_mod, "CHUNK_BYTES", 1)  # one output row per chunk
    layer, x = make(in_size, k, s, p)
    B = torch.randn(layer.weight.shape, dtype=torch.float64)
    y = lc2d(x, layer.weight, layer.bias, s, p, backward_weight=B)
    torch.testing.assert_close(y, naive_lc(x, layer.weight, layer.bias, s, p))
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, naive_grad_input(g, B, x.shape, s, p))
    torch.testing.assert_close(layer.weight.grad, naive_grad_weight(g, x.detach(), layer.weight.shape, s, p))


def _lc_all(x, layer, s, p, B):
    y = lc2d(x, layer.weight, layer.bias, s, p, backward_weight=B)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(3))
    gx, gw, gb = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)
    return y, gx, gw, gb, g


@pytest.mark.parametrize(("in_size", "k", "s", "p"), CASES)
def test_per_position_path_equals_the_chunked_formula_and_the_reference(monkeypatch, in_size, k, s, p):
    """The CPU per-position path (gather one patch matrix, torch.mm) against the chunked unfold + bmm path
    (the formula lc2d used before it, still used for small products and on GPUs) and the naive loops, in
    float64, with a feedback matrix B so the input gradient cannot be backprop's by accident."""
    import bioscale.layers.locally_connected as lc_mod

    layer, x = make(in_size, k, s, p)
    B = torch.randn(layer.weight.shape, dtype=torch.float64)
    monkeypatch.setattr(lc_mod, "PER_POSITION_MIN", 0)
    assert lc_mod._per_position(x, layer.out_channels, layer.in_channels)
    new = _lc_all(x, layer, s, p, B)
    monkeypatch.setattr(lc_mod, "PER_POSITION_MIN", 2**62)
    old = _lc_all(x, layer, s, p, B)
    for a, b in zip(new, old, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    y, gx, gw, gb, g = new
    torch.testing.assert_close(y, naive_lc(x, layer.weight, layer.bias, s, p))
    torch.testing.assert_close(gx, naive_grad_input(g, B, x.shape, s, p))
    torch.testing.assert_close(gw, naive_grad_weight(g, x.detach(), layer.weight.shape, s, p))
    torch.testing.assert_close(gb, g.sum(0))


def test_the_cifar_lc_nets_large_layers_take_the_per_position_path() -> None:
    import bioscale.layers.locally_connected as lc_mod

    k = lambda c, ks: c * ks * ks  # noqa: E731
    assert not lc_mod._per_position(torch.empty(128, 3, 1, 1), 64, k(3, 5))  # CIFAR layer 1: tiny products
    assert lc_mod._per_position(torch.empty(128, 64, 1, 1), 128, k(64, 5))  # layer 2
    assert lc_mod._per_position(torch.empty(128, 128, 1, 1), 256, k(128, 3))  # layer 3
