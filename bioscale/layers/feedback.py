"""Feedback layers: the forward pass uses W, the input gradient uses a feedback matrix B.

Backward rules of the feedback-alignment family differ only in *which* B a layer sends the error back
through (papers.md B.3, "Exact backward pass"): the weight gradient is always the ordinary local gradient
(grad_out^T x), and B never receives a gradient. So a layer here is the ordinary torch layer plus a small
``feedback`` submodule that produces B from the current W:

- ``MatrixFeedback``: a stored matrix (feedback alignment's fixed random B; Kolen-Pollack's trained B).
- ``SignFeedback``: sign(W) * scale, a fixed per-layer scale (Xiao et al.'s sign-symmetry).
- ``SignMagnitudeFeedback``: |M| * sign(W), a stored random magnitude M (Liao et al.'s frSF and brSF).

Every layer exposes the B its backward uses as ``feedback_weight`` (same shape as ``weight``). Stored B and
M are buffers, so they are in ``state_dict`` (checkpoints) and move with ``.to(device)``.

What the scale means (``feedback_scale``; ``fans`` gives fan_in = C_in*kh*kw, fan_out = C_out*kh*kw):
- ``xavier``: sqrt(2/(fan_in+fan_out)) (BioTorch); ``he-fanout``: sqrt(2/fan_out); ``xiao``: Xiao's code,
  sqrt(2/(kh*kw*C_out)) for conv/LC and 1/sqrt(fan_in) for linear layers.
- a random B (``draw_feedback``) has std ``scale``, drawn by ``dist``: ``normal`` N(0, scale^2) (bioscale's
  default) or ``uniform`` U(-sqrt(3) scale, sqrt(3) scale), BioTorch's draw (``nn.init.xavier_uniform_``,
  bound sqrt(6/(fan_in+fan_out)) for ``xavier``). Same std, different shape: mean |B| is sqrt(2/pi) = 0.80
  scale for normal, sqrt(3)/2 = 0.87 scale for uniform (8% apart). ``xiao`` draws exactly as Xiao's code
  and takes no ``dist``: conv N(0, scale^2), linear U(-scale, scale).
- sign-symmetry's B is sign(W) * scale: the scale is the magnitude of every entry.
- random-magnitude sign-concordant B uses |M| with M drawn as a random B above (Xiao's code: conv
  |N(0, scale)|, linear U(0, scale)).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioscale import optim
from bioscale.errors import BioscaleError
from bioscale.layers.locally_connected import LocallyConnected2d

FeedbackInit = Literal["xavier", "he-fanout", "xiao"]
FeedbackDist = Literal["normal", "uniform"]


# --------------------------------------------------------------------------------------------- scales


def fans(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight: linear (out, in); conv (out, in, kh, kw); LC (oh, ow, out, in, kh, kw)."""
    if len(shape) == 2:
        return int(shape[1]), int(shape[0])
    if len(shape) in (4, 6):
        out_c, in_c, kh, kw = (int(s) for s in shape[-4:])
        return in_c * kh * kw, out_c * kh * kw
    raise BioscaleError(
        f"cannot build a feedback matrix for a weight of shape {tuple(shape)}: only linear (2-d), conv "
        "(4-d) and locally-connected (6-d) weights are supported."
    )


def feedback_scale(shape: tuple[int, ...] | torch.Size, init: FeedbackInit) -> float:
    """The per-layer feedback scale for ``init`` (see the module docstring for what it multiplies)."""
    fan_in, fan_out = fans(shape)
    if init == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "he-fanout":
        return math.sqrt(2.0 / fan_out)
    if init == "xiao":
        return 1.0 / math.sqrt(fan_in) if len(shape) == 2 else math.sqrt(2.0 / fan_out)
    raise BioscaleError(f"unknown feedback_init {init!r}; use one of xavier, he-fanout, xiao.")


def check_dist(init: FeedbackInit, dist: FeedbackDist) -> None:
    """``xiao`` draws as Xiao's code does (module docstring); only the other scales take a distribution."""
    if init == "xiao" and dist != "normal":
        raise BioscaleError(
            f"feedback_dist {dist!r} does not apply to feedback_init 'xiao', which draws exactly as Xiao et "
            "al.'s code (conv N(0, s^2), linear U(-s, s)); leave feedback_dist at 'normal', or use "
            "feedback_init 'xavier' or 'he-fanout' with feedback_dist 'uniform'."
        )


def draw_feedback_(out: Tensor, init: FeedbackInit, dist: FeedbackDist = "normal") -> Tensor:
    """Fill ``out`` in place with a random B for a weight of its shape, from the global torch RNG. Drawn in
    logical order whatever ``out``'s memory layout (an in-place draw fills memory order: a channels_last B,
    ``train.channels_last``, would get other values at each position than a plain run's)."""
    check_dist(init, dist)
    if not out.is_contiguous():
        return out.copy_(draw_feedback(out, init, dist))
    scale = feedback_scale(out.shape, init)
    with torch.no_grad():
        if init == "xiao" and len(out.shape) == 2:
            return out.uniform_(-scale, scale)
        if dist == "uniform":
            bound = math.sqrt(3.0) * scale
            return out.uniform_(-bound, bound)
        return out.normal_(0.0, scale)


def draw_feedback(weight: Tensor, init: FeedbackInit, dist: FeedbackDist = "normal") -> Tensor:
    """A new random B shaped like ``weight`` (on its device, in its dtype)."""
    return draw_feedback_(torch.empty_like(weight, memory_format=torch.contiguous_format), init, dist)


# ------------------------------------------------------------------------------------ feedback sources


class MatrixFeedback(nn.Module):
    """B is a stored matrix (a buffer): fixed for feedback alignment, updated by Kolen-Pollack."""

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix.detach().clone())

    @classmethod
    def random(cls, weight: Tensor, init: FeedbackInit, dist: FeedbackDist = "normal") -> MatrixFeedback:
        return cls(draw_feedback(weight, init, dist))

    def forward(self, weight: Tensor) -> Tensor:
        return self.matrix

    def for_step(self, weight: Tensor) -> Tensor:
        return self._buffers["matrix"]  # type: ignore[return-value]  # the dict, not Module.__getattr__: per step


class _SignBase(nn.Module):
    """B computed from sign(W) at every training forward, into a reused workspace.

    ``forward`` returns a fresh tensor (for ``feedback_weight``, diagnostics, anyone). ``for_step``, what the
    layer's training forward uses, writes the same values into ``workspace`` (a non-persistent buffer shaped
    like W): on the CPU a fresh W-sized tensor every step costs page faults worth ~15% of a small net's step.
    The workspace is saved for backward, so overwriting it before that backward would be caught by autograd's
    in-place check; it is therefore refilled only when W (or the module's own tensors, e.g. a redrawn |M|)
    changed since it was filled (its version, or an optimiser step: ``bioscale.optim.steps``): a layer applied
    several times in one forward (RetinaNet's head convs, shared by the five pyramid levels) reuses the same
    B, which is exactly sign(W) of the step.
    """

    workspace: Tensor | None

    def __init__(self, weight: Tensor | None) -> None:
        super().__init__()
        ws = torch.empty_like(weight, memory_format=torch.contiguous_format) if weight is not None else None
        self.register_buffer("workspace", ws, persistent=False)
        self._filled_for: tuple[Any, ...] | None = None

    def _apply_sign(self, sign: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, weight: Tensor) -> Tensor:
        return self._apply_sign(torch.sign(weight.detach()))

    def for_step(self, weight: Tensor) -> Tensor:
        ws = self._buffers["workspace"]  # the dicts, not Module.__getattr__: this runs per layer per step
        if ws is None or torch.compiler.is_compiling():  # a traced graph recomputes B each call, as a fresh
            return self(weight)  # value: writing into the workspace would be a buffer mutation (no CUDA graphs)
        # an optimiser step changes W: a fused one without bumping W's version, hence the step count; the
        # workspace's own pointer and version catch a moved (``.to``) or overwritten workspace
        key = (optim.steps(), weight.data_ptr(), weight._version, ws.data_ptr(), ws._version, self._versions())
        if key == self._filled_for:
            return ws
        if ws.shape != weight.shape or ws.dtype != weight.dtype:
            return self(weight)
        out = self._apply_sign(torch.sign(weight.detach(), out=ws))
        self._filled_for = (*key[:4], ws._version, key[5])
        return out

    def _versions(self) -> tuple[int, ...]:
        """Where and at which version the module's own tensors that B depends on besides W are (none here)."""
        return ()


class SignFeedback(_SignBase):
    """B = sign(W) * scale, from the current W: sign-symmetry (Xiao et al.). The scale is a fixed float.
    Pass the layer's ``weight`` to get the reused workspace (see ``_SignBase``)."""

    def __init__(self, scale: float, weight: Tensor | None = None) -> None:
        super().__init__(weight)
        self.scale = float(scale)

    def _apply_sign(self, sign: Tensor) -> Tensor:
        return sign.mul_(self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


class SignMagnitudeFeedback(_SignBase):
    """B = |M| * sign(W): sign-concordant feedback with random magnitudes (Liao et al.'s frSF/brSF).

    ``magnitude`` holds |M| as a buffer; ``redraw_`` draws a fresh one (brSF calls it after every update).
    """

    def __init__(self, magnitude: Tensor, init: FeedbackInit, dist: FeedbackDist = "normal") -> None:
        super().__init__(magnitude)
        check_dist(init, dist)
        self.init: FeedbackInit = init
        self.dist: FeedbackDist = dist
        self.register_buffer("magnitude", magnitude.detach().abs())

    @classmethod
    def random(cls, weight: Tensor, init: FeedbackInit, dist: FeedbackDist = "normal") -> SignMagnitudeFeedback:
        return cls(draw_feedback(weight, init, dist), init, dist)

    def redraw_(self) -> None:
        draw_feedback_(self.magnitude, self.init, self.dist).abs_()

    def _versions(self) -> tuple[int, ...]:
        magnitude = self._buffers["magnitude"]
        return (magnitude.data_ptr(), magnitude._version)  # type: ignore[union-attr]

    def _apply_sign(self, sign: Tensor) -> Tensor:
        return sign.mul_(self.magnitude)

    def extra_repr(self) -> str:
        return f"init={self.init!r}, dist={self.dist!r}"


# ------------------------------------------------------------------------------------ autograd functions


class _LinearFeedback(torch.autograd.Function):
    """y = x W^T + b; grad_x = grad_y B (B replaces W); grad_W = grad_y^T x; B gets no gradient.

    Under autocast the forward op autocasts as usual; backward runs in grad_out's dtype by explicit casts
    (cheaper per call than ``torch.amp.custom_fwd/custom_bwd``); autograd returns W's grad in W's dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.matmul(feedback.to(grad.dtype))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g2 = grad.reshape(-1, grad.shape[-1])
            if ctx.needs_input_grad[1]:
                grad_w = g2.t().matmul(x.reshape(-1, x.shape[-1]).to(g2.dtype))
            if ctx.needs_input_grad[2]:
                grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None


class _Conv2dFeedback(torch.autograd.Function):
    """conv2d forward with W; one ``convolution_backward`` call with B in the weight slot.

    ``convolution_backward`` computes grad_input from the weight it is given (here B) and grad_weight from
    the input and grad_output only (the weight enters just through its shape), so a single call yields the
    feedback input gradient and the exact weight gradient with no wasted work.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor,
                stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                groups: int) -> Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
        if not any(mask):
            return None, None, None, None, None, None, None, None
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x.to(grad.dtype), feedback.to(grad.dtype), [feedback.shape[0]] if has_bias else None,
            list(stride), list(padding), list(dilation), False, [0, 0], groups, mask,
        )
        return grad_x, grad_w, grad_b, None, None, None, None, None


def linear_feedback(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
    """``F.linear`` whose input gradient uses ``feedback`` (shape of ``weight``) in place of ``weight``.

    A 2-d input (every FC net's batch) takes the plain op: ``F.linear`` records one addmm (mm without bias)
    node, which saves x for W's gradient and W^T for x's; a saved-tensor hook (torch's documented
    ``grad_fn._raw_saved_*.register_hooks``) swaps the saved W^T for B^T, so torch's own C++ backward computes
    grad_x = grad_y B and grad_W = grad_y^T x. On the paper's 256-wide MNIST FC net a Python
    ``autograd.Function`` per layer made fa cost 1.04-1.075x bp's step, the hook (two small Python calls)
    1.03x, most of the rest reading B (benchmarks/bench_backward_rules.py; issue 13). An input that needs no
    gradient (a net's first layer) needs no B at all. Other shapes and traced code (``torch.compile``) use
    ``_LinearFeedback``.
    """
    if not x.requires_grad:
        return F.linear(x, weight, bias)
    if x.dim() != 2 or torch.compiler.is_compiling():
        return _LinearFeedback.apply(x, weight, bias, feedback.detach())
    return _linear_swapped(x, weight, bias, feedback.detach().t())


def _linear_swapped(x: Tensor, weight: Tensor, bias: Tensor | None, feedback_t: Tensor) -> Tensor:
    """``linear_feedback``'s eager path for a 2-d ``x`` that needs a gradient, given B^T (no grad)."""
    out = F.linear(x, weight, bias)
    if out.grad_fn is not None:  # None only when nothing needs a gradient
        _swap_saved(out.grad_fn._raw_saved_mat2, feedback_t)
    return out


def _swap_saved(saved: Any, replacement: Tensor) -> None:
    """Make the autograd node's saved tensor ``saved`` read as ``replacement`` (cast to the saved dtype,
    for autocast) in backward. The saved original is dropped at once (its dtype is all that is kept).
    Like ``save_for_backward``, an in-place change of ``replacement`` before backward is an error."""
    version = replacement._version

    def unpack(dtype: torch.dtype) -> Tensor:
        if replacement._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                "operation: the feedback matrix B changed between this layer's forward and its backward"
            )
        return replacement if replacement.dtype == dtype else replacement.to(dtype)

    saved.register_hooks(_saved_dtype, unpack)


def _saved_dtype(tensor: Tensor) -> torch.dtype:
    return tensor.dtype


def conv2d_feedback(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor,
                    stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                    dilation: tuple[int, int] = (1, 1), groups: int = 1) -> Tensor:
    """``F.conv2d`` (numeric padding) whose input gradient is conv_transpose2d with ``feedback``. As in
    ``linear_feedback``, eager code runs torch's own convolution node with B swapped into its saved weight
    (``convolution_backward`` takes grad_input from that weight and grad_weight from input and grad_out
    only, the property ``_Conv2dFeedback`` also rests on); traced code uses ``_Conv2dFeedback``."""
    if not x.requires_grad:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if not torch.compiler.is_compiling():
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if out.grad_fn is not None:
            _swap_saved(out.grad_fn._raw_saved_weight, feedback.detach())
        return out
    return _Conv2dFeedback.apply(x, weight, bias, feedback.detach(), tuple(stride), tuple(padding),
                                 tuple(dilation), groups)


# -------------------------------------------------------------------------------------------- layers


class FeedbackMixin:
    """What every feedback layer shares: ``feedback`` (a source of B), ``feedback_weight`` and a switch.

    ``use_backprop`` (default False) makes the layer plain backprop; the diagnostics flip it to measure the
    true gradient on the same batch. The input gradient uses B only while autograd records: under
    ``torch.no_grad`` (evaluation) the layer runs the ordinary op and B is never computed.
    """

    weight: Tensor
    feedback: nn.Module
    use_backprop: bool

    @property
    def feedback_weight(self) -> Tensor:
        """The matrix the backward pass uses for the input gradient (same shape as ``weight``)."""
        return self.feedback(self.weight)

    def _feedback_active(self) -> bool:
        return torch.is_grad_enabled() and not self.use_backprop

    def _feedback_for(self, x: Tensor) -> Tensor:
        """B for this training step when the input gradient is needed; else W as a stand-in that backward
        never reads (so the first layer of a net, whose input is data, never builds sign(W) * scale)."""
        weight, feedback = self.weight, self.feedback
        if not x.requires_grad:
            return weight
        for_step = getattr(feedback, "for_step", None)
        return for_step(weight) if for_step is not None else feedback(weight)


def _default_feedback(weight: Tensor, feedback: nn.Module | None) -> nn.Module:
    return feedback if feedback is not None else MatrixFeedback.random(weight, "xavier")


class FeedbackLinear(FeedbackMixin, nn.Linear):
    """``nn.Linear`` whose input gradient is grad_out @ B. ``feedback`` defaults to a fixed random B."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 feedback: nn.Module | None = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.feedback = _default_feedback(self.weight, feedback)
        self.use_backprop = False
        self._feedback_t: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        if not (x.requires_grad and self._feedback_active()):
            return F.linear(x, weight, bias)
        b = self._feedback_for(x)
        if x.dim() != 2 or b.requires_grad or torch.compiler.is_compiling():
            return linear_feedback(x, weight, bias, b)
        # B^T is a view made once per B tensor (a stored B, a sign workspace), not once per step: this path
        # runs per layer per step, and on the paper's 256-wide nets each microsecond is ~0.1% of a step. The
        # pointer check keeps a copied module (deepcopy, pickle) from using a copy that is no view of its B.
        cached = self._feedback_t
        if cached is None or cached[0] is not b or cached[1].data_ptr() != b.data_ptr():
            cached = self._feedback_t = (b, b.t())
        return _linear_swapped(x, weight, bias, cached[1])


class FeedbackConv2d(FeedbackMixin, nn.Conv2d):
    """``nn.Conv2d`` whose input gradient is conv_transpose2d(grad_out, B). Any padding mode and 'same'
    padding work: the input is padded first (ordinary autograd) and the feedback conv runs unpadded."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", feedback: nn.Module | None = None, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self.feedback = _default_feedback(self.weight, feedback)
        self.use_backprop = False

    def forward(self, x: Tensor) -> Tensor:
        if not self._feedback_active():
            return super().forward(x)
        padding: Any = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        return conv2d_feedback(x, self.weight, self.bias, self._feedback_for(x), self.stride, padding,
                               self.dilation, self.groups)


class FeedbackLocallyConnected2d(FeedbackMixin, LocallyConnected2d):
    """``LocallyConnected2d`` whose input gradient uses B: lc2d's ``backward_weight``."""

    def __init__(self, in_channels: int, out_channels: int, in_size: Any, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, bias: bool = True, feedback: nn.Module | None = None) -> None:
        super().__init__(in_channels, out_channels, in_size, kernel_size, stride, padding, bias)
        self.feedback = _default_feedback(self.weight, feedback)
        self.use_backprop = False

    def forward(self, x: Tensor) -> Tensor:
        if self._feedback_active() and x.requires_grad:
            return self._lc(x, backward_weight=self._feedback_for(x))
        return self._lc(x)


FEEDBACK_LAYERS: tuple[type[nn.Module], ...] = (FeedbackLinear, FeedbackConv2d, FeedbackLocallyConnected2d)


def is_feedback_layer(module: nn.Module) -> bool:
    return isinstance(module, FEEDBACK_LAYERS)
