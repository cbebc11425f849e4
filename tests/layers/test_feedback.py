"""Feedback layers: the input gradient is the published formula with B, the weight gradient is backprop's.

Every expected value is computed here independently (explicit matmuls, conv_transpose2d, an einsum
locally-connected layer) from the same B the layer reports, never by calling the layer's own backward.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from bioscale.errors import BioscaleError
from bioscale.layers.feedback import (
    FeedbackConv2d,
    FeedbackLinear,
    FeedbackLocallyConnected2d,
    MatrixFeedback,
    SignFeedback,
    SignMagnitudeFeedback,
    draw_feedback,
    fans,
    feedback_scale,
)
from bioscale.layers.locally_connected import LocallyConnected2d

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons in float64


def _sources(weight: torch.Tensor) -> dict[str, torch.nn.Module]:
    return {
        "matrix": MatrixFeedback.random(weight, "xavier"),
        "sign": SignFeedback(0.37, weight),
        "sign_magnitude": SignMagnitudeFeedback.random(weight, "he-fanout"),
    }


def _grads(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    layer(x).backward(g)
    bias = layer.bias.grad if layer.bias is not None else None
    return x.grad, layer.weight.grad, bias


# ------------------------------------------------------------------------------------------------ linear


# a 2-d batch runs torch's own addmm node with B swapped into its saved W^T; other shapes a Python Function
LINEAR_INPUTS = {"2d (saved-tensor hook)": (6,), "3d (autograd.Function)": (3, 2)}


@pytest.mark.parametrize("lead", LINEAR_INPUTS.values(), ids=LINEAR_INPUTS.keys())
@pytest.mark.parametrize("kind", ["matrix", "sign", "sign_magnitude"])
def test_linear_input_grad_is_grad_out_times_b_and_weight_grad_is_local(kind: str, lead: tuple[int, ...]
                                                                        ) -> None:
    torch.manual_seed(0)
    layer = FeedbackLinear(5, 4)
    layer.feedback = _sources(layer.weight)[kind]
    x, g = torch.randn(*lead, 5), torch.randn(*lead, 4)  # a leading dim beyond the batch: applied per row
    gx, gw, gb = _grads(layer, x, g)
    b = layer.feedback_weight
    assert not torch.allclose(b, layer.weight)
    torch.testing.assert_close(gx, g @ b, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, g.reshape(-1, 4).T @ x.reshape(-1, 5), rtol=0, atol=1e-12)
    torch.testing.assert_close(gb, g.reshape(-1, 4).sum(0), rtol=0, atol=1e-12)
    # ... which differs from what backprop would send down
    assert not torch.allclose(gx, g @ layer.weight)


def test_sign_feedback_is_sign_of_current_weight_times_scale() -> None:
    layer = FeedbackLinear(6, 3, feedback=SignFeedback(0.25))
    torch.testing.assert_close(layer.feedback_weight, torch.sign(layer.weight) * 0.25, rtol=0, atol=0)
    with torch.no_grad():
        layer.weight.neg_()  # tracks the current W, not the one at construction
    torch.testing.assert_close(layer.feedback_weight, torch.sign(layer.weight) * 0.25, rtol=0, atol=0)
    with torch.no_grad():
        layer.weight[0, 0] = 0.0
    assert layer.feedback_weight[0, 0] == 0.0  # sign(0) = 0, as Xiao's code


@pytest.mark.parametrize("lead", LINEAR_INPUTS.values(), ids=LINEAR_INPUTS.keys())
def test_sign_workspace_is_reused_and_guarded(lead: tuple[int, ...]) -> None:
    torch.manual_seed(13)
    layer = FeedbackLinear(6, 3, feedback=SignFeedback(0.5, torch.empty(3, 6)))
    ws = layer.feedback.workspace
    assert "feedback.workspace" not in layer.state_dict()  # derived from W: nothing to checkpoint
    x, g = torch.randn(*lead, 6, requires_grad=True), torch.randn(*lead, 3)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, g @ (torch.sign(layer.weight) * 0.5), rtol=0, atol=1e-12)
    assert layer.feedback.workspace is ws
    torch.testing.assert_close(ws, torch.sign(layer.weight) * 0.5, rtol=0, atol=0)
    # two training forwards before the first backward with the same W (a layer shared by several inputs, as
    # RetinaNet's head convs): B is sign(W) of this W for both, so the workspace is reused, not rewritten
    x.grad = None
    out1, out2 = layer(x), layer(x)
    (out1 + out2).backward(g)
    torch.testing.assert_close(x.grad, 2 * g @ (torch.sign(layer.weight) * 0.5), rtol=0, atol=1e-12)
    # W changed in between: the refill is caught by autograd, never silently used
    out1 = layer(x)
    with torch.no_grad():
        layer.weight.neg_()
    layer(x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out1.backward(g)


@pytest.mark.parametrize("impl", ["fused", "foreach", "loop"])
def test_sign_workspace_follows_every_optimiser_step(impl: str) -> None:
    """A fused step changes W in place without bumping its version: B must still be sign(W) of the W each
    step's forward sees, for every optimiser implementation."""
    from bioscale.optim import build_optimizer
    from bioscale.spec import OptimSpec

    torch.manual_seed(3)
    layer = FeedbackLinear(6, 3, feedback=SignFeedback(0.5, torch.empty(3, 6)))
    opt = build_optimizer([{"params": [layer.weight, layer.bias]}],
                          OptimSpec(name="sgd", lr=5.0, impl=impl))  # large steps: signs of W flip
    x, g = torch.randn(4, 6, requires_grad=True), torch.randn(4, 3)
    flips = 0
    for _ in range(4):
        before = torch.sign(layer.weight.detach()).clone()
        x.grad = None
        opt.zero_grad()
        layer(x).backward(g)
        torch.testing.assert_close(x.grad, g @ (torch.sign(layer.weight) * 0.5), rtol=0, atol=1e-12)
        opt.step()
        flips += int((torch.sign(layer.weight.detach()) != before).sum())
    assert flips > 0  # the check above saw W's signs change between steps


@pytest.mark.parametrize("kind", ["matrix", "sign", "sign_magnitude"])
def test_the_per_step_caches_follow_b_however_it_changes(kind: str) -> None:
    """The 2-d path caches B^T (a view) per B tensor and the sign sources refill their workspace only when
    something changed: every way B can change between steps must reach the next step's input gradient."""
    import copy

    torch.manual_seed(5)
    layer = FeedbackLinear(6, 3, feedback=_sources(torch.empty(3, 6))[kind])
    x, g = torch.randn(4, 6), torch.randn(4, 3)

    def check(layer: FeedbackLinear) -> None:
        expected = g @ layer.feedback(layer.weight)  # B from the source's own formula, computed afresh
        torch.testing.assert_close(_grads(layer, x, g)[0], expected, rtol=0, atol=1e-12)

    check(layer)
    own = {"matrix": "matrix", "sign_magnitude": "magnitude"}.get(kind)
    if own is not None:  # an in-place change of the source's own tensor (Kolen-Pollack's update, brSF's redraw)
        with torch.no_grad():
            getattr(layer.feedback, own).mul_(-2.0)
        check(layer)
    with torch.no_grad():
        layer.weight.mul_(-1.0)
    check(layer)
    copied = copy.deepcopy(layer)  # a copy, then changed: the copy's own B, not the original's
    with torch.no_grad():
        copied.weight.add_(torch.randn(3, 6))
        if kind == "matrix":
            copied.feedback.matrix.add_(torch.randn(3, 6))
    check(copied)
    check(layer)
    if kind == "matrix":  # a replaced buffer
        layer.feedback.matrix = torch.randn(3, 6)
        check(layer)
    layer.to(torch.float32)  # moved/converted: new tensors for W and every buffer
    x, g = x.float(), g.float()
    expected = g @ layer.feedback(layer.weight)
    torch.testing.assert_close(_grads(layer, x, g)[0], expected, rtol=0, atol=1e-6)


def test_sign_magnitude_feedback_is_abs_m_times_sign_w_and_redraws() -> None:
    torch.manual_seed(1)
    w = torch.randn(4, 3)
    fb = SignMagnitudeFeedback.random(w, "xavier")
    m = fb.magnitude.clone()
    assert (m >= 0).all()
    torch.testing.assert_close(fb(w), m * torch.sign(w), rtol=0, atol=0)
    fb.redraw_()
    assert (fb.magnitude >= 0).all() and not torch.equal(fb.magnitude, m)


def test_a_2d_batch_runs_torchs_own_node_and_frees_the_saved_weight() -> None:
    """The fast path is torch's addmm/mm node, not a Python Function, and it keeps no copy of W for x's
    gradient (the saved W^T is dropped for B^T at once)."""
    torch.manual_seed(5)
    x = torch.randn(4, 6, requires_grad=True)
    for bias in (True, False):
        layer = FeedbackLinear(6, 3, bias=bias)
        out = layer(x)
        assert type(out.grad_fn).__name__ == ("AddmmBackward0" if bias else "MmBackward0")
    # the first layer of a net (input without grad) is the plain op: nothing of B is involved
    assert type(layer(torch.randn(4, 6)).grad_fn).__name__ == "MmBackward0"
    conv = FeedbackConv2d(2, 3, 3)
    assert type(conv(torch.randn(1, 2, 5, 5, requires_grad=True)).grad_fn).__name__ == "ConvolutionBackward0"


def test_a_changed_conv_feedback_is_caught() -> None:
    torch.manual_seed(7)
    layer = FeedbackConv2d(2, 3, 3)
    out = layer(torch.randn(1, 2, 5, 5, requires_grad=True))
    with torch.no_grad():
        layer.feedback.matrix.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_a_changed_feedback_matrix_is_caught_on_both_paths() -> None:
    """Like ``save_for_backward``, an in-place change of B between a forward and its backward is an error,
    never a silent use of the new B."""
    torch.manual_seed(6)
    for lead in LINEAR_INPUTS.values():
        layer = FeedbackLinear(6, 3)
        x = torch.randn(*lead, 6, requires_grad=True)
        out = layer(x)
        with torch.no_grad():
            layer.feedback.matrix.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def test_linear_with_b_equal_w_is_backprop() -> None:
    torch.manual_seed(2)
    layer = FeedbackLinear(7, 5)
    layer.feedback = MatrixFeedback(layer.weight)
    ref = torch.nn.Linear(7, 5)
    ref.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    x, g = torch.randn(4, 7), torch.randn(4, 5)
    for a, b in zip(_grads(layer, x, g), _grads(ref, x, g), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_no_bias_and_input_without_grad() -> None:
    layer = FeedbackLinear(3, 2, bias=False)
    x = torch.randn(4, 3)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(4, 2).T @ x)


def test_eval_under_no_grad_is_the_plain_op_and_never_builds_b() -> None:
    class Counting(SignFeedback):
        calls = 0

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            return super().forward(weight)

    layer = FeedbackLinear(3, 2, feedback=Counting(1.0))
    x = torch.randn(4, 3)
    with torch.no_grad():
        out = layer(x)
    assert Counting.calls == 0
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()
    assert Counting.calls == 0  # the input is data: no input gradient, so no B
    layer(x.requires_grad_(True)).sum().backward()
    assert Counting.calls == 1  # once per training forward (= once per step), not per use


def test_use_backprop_switch() -> None:
    layer = FeedbackLinear(3, 2)
    layer.use_backprop = True
    x, g = torch.randn(4, 3), torch.randn(4, 2)
    gx, _, _ = _grads(layer, x, g)
    torch.testing.assert_close(gx, g @ layer.weight)


# -------------------------------------------------------------------------------------------------- conv


CONV_CASES = [
    dict(stride=1, padding=1, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=2, padding=0, dilation=2, groups=1),
    dict(stride=1, padding=2, dilation=1, groups=2),
]


@pytest.fixture(params=["torch node", "autograd.Function"])
def conv_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Eager code swaps B into torch's convolution node; traced code (``torch.compile``) takes
    ``_Conv2dFeedback``: run the formula tests on both (the second as if tracing)."""
    if request.param == "autograd.Function":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("kind", ["matrix", "sign", "sign_magnitude"])
def test_conv_input_grad_is_conv_transpose_with_b(case: dict, kind: str, conv_path: str) -> None:
    torch.manual_seed(3)
    layer = FeedbackConv2d(4, 6, 3, **case)
    layer.feedback = _sources(layer.weight)[kind]
    x = torch.randn(2, 4, 9, 9)
    out_shape = layer(x).shape
    g = torch.randn(out_shape)
    gx, gw, gb = _grads(layer, x, g)
    b = layer.feedback_weight
    # independent formula: the transposed convolution of grad_out with B (output_padding recovers the size)
    s, p, d = case["stride"], case["padding"], case["dilation"]
    natural = (out_shape[-1] - 1) * s - 2 * p + d * 2 + 1
    expected_x = F.conv_transpose2d(g, b, stride=s, padding=p, output_padding=9 - natural,
                                    groups=case["groups"], dilation=d)
    torch.testing.assert_close(gx, expected_x, rtol=0, atol=1e-10)
    # the weight/bias gradients are exactly backprop's for the same incoming signal
    ref = torch.nn.Conv2d(4, 6, 3, **case)
    ref.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    rx, rw, rb = _grads(ref, x, g)
    torch.testing.assert_close(gw, rw, rtol=0, atol=1e-10)
    torch.testing.assert_close(gb, rb, rtol=0, atol=1e-10)
    assert not torch.allclose(gx, rx)


@pytest.mark.parametrize("padding,mode", [("same", "zeros"), (1, "reflect"), (1, "circular")])
def test_conv_string_padding_and_padding_modes(padding: object, mode: str, conv_path: str) -> None:
    torch.manual_seed(4)
    layer = FeedbackConv2d(2, 3, 3, padding=padding, padding_mode=mode)
    ref = torch.nn.Conv2d(2, 3, 3, padding=padding, padding_mode=mode)
    ref.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    x = torch.randn(2, 2, 6, 6)
    torch.testing.assert_close(layer(x), ref(x))
    g = torch.randn_like(ref(x))
    gx, gw, _ = _grads(layer, x, g)
    _, rw, _ = _grads(ref, x, g)
    torch.testing.assert_close(gw, rw)
    # expected input grad: B's transposed conv on the padded input, then the padding's own adjoint
    xp = x.clone().requires_grad_(True)
    pad = F.pad(xp, ref._reversed_padding_repeated_twice, mode="constant" if mode == "zeros" else mode)
    pad.backward(F.conv_transpose2d(g, layer.feedback_weight))
    torch.testing.assert_close(gx, xp.grad)


def test_conv_with_b_equal_w_is_backprop(conv_path: str) -> None:
    torch.manual_seed(5)
    layer = FeedbackConv2d(3, 5, 3, stride=2, padding=1)
    layer.feedback = MatrixFeedback(layer.weight)
    ref = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    ref.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    x = torch.randn(2, 3, 8, 8)
    g = torch.randn_like(ref(x))
    for a, b in zip(_grads(layer, x, g), _grads(ref, x, g), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- locally connected


def _lc_einsum(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """out[n,o,i,j] = sum_{c,u,v} w[i,j,o,c,u,v] xpad[n,c,i*s+u,j*s+v] (no bias), by explicit patches."""
    oh, ow, _, _, kh, kw = w.shape
    xp = F.pad(x, (padding,) * 4)
    patches = xp.unfold(2, kh, stride).unfold(3, kw, stride)[:, :, :oh, :ow]  # n c i j u v
    return torch.einsum("ncijuv,ijocuv->noij", patches, w)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
@pytest.mark.parametrize("kind", ["matrix", "sign", "sign_magnitude"])
def test_lc_input_grad_uses_b_and_weight_grad_is_local(stride: int, padding: int, kind: str) -> None:
    torch.manual_seed(6)
    layer = FeedbackLocallyConnected2d(3, 4, (7, 7), 3, stride, padding)
    layer.feedback = _sources(layer.weight)[kind]
    x = torch.randn(2, 3, 7, 7)
    g = torch.randn(2, 4, *layer.out_size)
    gx, gw, gb = _grads(layer, x, g)
    b = layer.feedback_weight
    # independent: the input gradient of the einsum LC with weights B (its adjoint applied to g)
    xr = x.clone().requires_grad_(True)
    _lc_einsum(xr, b, stride, padding).backward(g)
    torch.testing.assert_close(gx, xr.grad, rtol=0, atol=1e-10)
    # weight gradient: backprop's on the einsum LC with the real W
    wr = layer.weight.detach().clone().requires_grad_(True)
    _lc_einsum(x, wr, stride, padding).backward(g)
    torch.testing.assert_close(gw, wr.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(gb, g.sum(0), rtol=0, atol=1e-10)
    # and the plain layer (backprop) sends something else down
    plain = LocallyConnected2d(3, 4, (7, 7), 3, stride, padding)
    plain.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    assert not torch.allclose(_grads(plain, x, g)[0], gx)


def test_lc_with_b_equal_w_is_backprop() -> None:
    torch.manual_seed(7)
    layer = FeedbackLocallyConnected2d(2, 3, (6, 6), 3, 1, 1)
    layer.feedback = MatrixFeedback(layer.weight)
    plain = LocallyConnected2d(2, 3, (6, 6), 3, 1, 1)
    plain.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    x, g = torch.randn(2, 2, 6, 6), torch.randn(2, 3, 6, 6)
    for a, b in zip(_grads(layer, x, g), _grads(plain, x, g), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- scales and state


def test_fans_and_scales() -> None:
    assert fans((10, 20)) == (20, 10)
    assert fans((8, 3, 5, 5)) == (75, 200)
    assert fans((4, 4, 8, 3, 5, 5)) == (75, 200)  # per position, like a conv
    assert feedback_scale((10, 20), "xavier") == pytest.approx(math.sqrt(2 / 30))
    assert feedback_scale((10, 20), "he-fanout") == pytest.approx(math.sqrt(2 / 10))
    assert feedback_scale((10, 20), "xiao") == pytest.approx(1 / math.sqrt(20))
    assert feedback_scale((8, 3, 5, 5), "xiao") == pytest.approx(math.sqrt(2 / (5 * 5 * 8)))
    assert feedback_scale((8, 3, 5, 5), "he-fanout") == pytest.approx(math.sqrt(2 / 200))
    with pytest.raises(BioscaleError, match="only linear"):
        fans((3, 4, 5))


def test_random_feedback_distributions() -> None:
    torch.manual_seed(8)
    lin = draw_feedback(torch.empty(400, 500), "xiao")  # Xiao's linear FA: U(-1/sqrt(in), 1/sqrt(in))
    bound = 1 / math.sqrt(500)
    assert lin.abs().max() <= bound and lin.abs().max() > 0.99 * bound
    assert lin.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    conv = draw_feedback(torch.empty(64, 32, 3, 3), "xiao")  # N(0, sqrt(2/(k*k*C_out)))
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.02)
    xav = draw_feedback(torch.empty(300, 200), "xavier")
    assert xav.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.02)
    assert abs(xav.mean().item()) < 0.01


@pytest.mark.parametrize("init", ["xavier", "he-fanout"])
@pytest.mark.parametrize("shape", [(300, 200), (64, 32, 3, 3), (2, 2, 48, 16, 3, 3)])
def test_feedback_dist_normal_and_uniform_share_the_std(init: str, shape: tuple[int, ...]) -> None:
    """``normal``: N(0, s^2); ``uniform``: BioTorch's Glorot-uniform U(-sqrt(3) s, sqrt(3) s), same std s
    (for xavier, sqrt(3) s = sqrt(6/(fan_in+fan_out)), ``nn.init.xavier_uniform_``'s bound)."""
    fan_in = math.prod(shape[-3:]) if len(shape) > 2 else shape[1]
    fan_out = shape[-4] * math.prod(shape[-2:]) if len(shape) > 2 else shape[0]
    s = math.sqrt(2 / (fan_in + fan_out)) if init == "xavier" else math.sqrt(2 / fan_out)
    torch.manual_seed(3)
    normal = draw_feedback(torch.empty(shape), init, "normal")
    uniform = draw_feedback(torch.empty(shape), init, "uniform")
    for b in (normal, uniform):
        assert b.std().item() == pytest.approx(s, rel=0.03)
        assert abs(b.mean().item()) < 0.03 * s
    bound = math.sqrt(3) * s
    assert uniform.abs().max() <= bound and uniform.abs().max() > 0.99 * bound  # bounded, and fills it
    assert normal.abs().max() > 1.5 * bound  # a normal's tails pass the uniform's bound
    # the mean magnitude frsf/brsf's |M| sees: sqrt(2/pi) s for normal, sqrt(3)/2 s for uniform (8% apart)
    assert normal.abs().mean().item() == pytest.approx(math.sqrt(2 / math.pi) * s, rel=0.03)
    assert uniform.abs().mean().item() == pytest.approx(math.sqrt(3) / 2 * s, rel=0.03)
    if init == "xavier" and len(shape) == 2:  # the same distribution as torch's own xavier_uniform_
        torch.manual_seed(4)
        reference = torch.nn.init.xavier_uniform_(torch.empty(shape))
        assert reference.abs().max() <= bound and reference.std().item() == pytest.approx(s, rel=0.03)


def test_sign_magnitude_feedback_keeps_its_dist_when_redrawn() -> None:
    torch.manual_seed(5)
    weight = torch.empty(200, 300)
    src = SignMagnitudeFeedback.random(weight, "xavier", "uniform")
    bound = math.sqrt(3) * math.sqrt(2 / 500)
    for _ in range(2):
        assert src.magnitude.min() >= 0 and src.magnitude.max() <= bound
        assert src.magnitude.mean().item() == pytest.approx(bound / 2, rel=0.03)  # U(0, bound)
        src.redraw_()


def test_xiao_takes_no_feedback_dist() -> None:
    with pytest.raises(BioscaleError, match="does not apply to feedback_init 'xiao'"):
        draw_feedback(torch.empty(4, 5), "xiao", "uniform")
    with pytest.raises(BioscaleError, match="does not apply"):
        SignMagnitudeFeedback(torch.ones(4, 5), "xiao", "uniform")


def test_feedback_drawn_from_global_rng() -> None:
    torch.manual_seed(9)
    a = FeedbackLinear(5, 4).feedback_weight.clone()
    torch.manual_seed(9)
    b = FeedbackLinear(5, 4).feedback_weight.clone()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("make", [
    lambda: FeedbackLinear(5, 4),
    lambda: FeedbackConv2d(2, 3, 3, feedback=SignMagnitudeFeedback.random(torch.empty(3, 2, 3, 3), "xiao")),
    lambda: FeedbackLocallyConnected2d(2, 3, (5, 5), 3),
])
def test_state_dict_round_trips_b_exactly(make: object) -> None:
    torch.manual_seed(10)
    src = make()  # type: ignore[operator]
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    torch.manual_seed(11)
    dst = make()  # type: ignore[operator]
    assert not torch.equal(dst.feedback_weight, src.feedback_weight)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf))
    assert torch.equal(dst.feedback_weight, src.feedback_weight)
    # B is a buffer: it follows .to()
    assert dst.to(torch.float32).feedback_weight.dtype == torch.float32


def test_autocast_bfloat16_gives_float32_grads_close_to_full_precision() -> None:
    torch.manual_seed(12)
    layers = torch.nn.Sequential(FeedbackConv2d(1, 2, 3, padding=1, dtype=torch.float32), torch.nn.ReLU(),
                                 torch.nn.Flatten(), FeedbackLinear(32, 3, dtype=torch.float32))
    x = torch.randn(4, 1, 4, 4, dtype=torch.float32)
    layers(x).sum().backward()
    full = [p.grad.clone() for p in layers.parameters()]
    layers.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layers(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    for p, g in zip(layers.parameters(), full, strict=True):
        assert p.grad.dtype == torch.float32
        assert ((p.grad - g).norm() / g.norm()).item() < 0.05  # bfloat16 keeps ~3 significant digits
