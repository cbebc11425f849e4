"""Locally-connected 2d layers: a convolution whose filter is different at every output position.

Algorithm. The input is unfolded into ``cols`` of shape (positions L, in_channels*kh*kw K, batch N),
contiguous; the forward pass is a batched matmul over positions with the weight viewed as (L, O, K), and
so are both gradients:

    out[l]       = W[l] @ cols[l]            (O x N)
    grad_W[l]    = grad_out[l] @ cols[l]^T   (O x K)   -- always the true local gradient
    grad_cols[l] = B[l]^T @ grad_out[l]      (K x N)   -- B = backward_weight if given, else W

and ``grad_cols`` is folded (summed back onto the padded input). The batch is the innermost dimension so
that unfold and fold move runs of N contiguous values (NCHW patches are only kw long: ~2.5x slower on CPU).
Backward recomputes ``cols`` from the saved input instead of saving it: an unfolded input is kh*kw times
the input, and the input is usually saved anyway by the previous layer's activation, so a deep LC net keeps
~1x its activations instead of ~k^2 x (Bartunov et al.'s ImageNet LC nets ran out of memory). ``cols`` is
built and consumed in chunks of output rows (``CHUNK_BYTES``), so the transient memory is one chunk, never
a whole unfolded input; the largest temporary is then the weight-sized weight gradient itself.

On the CPU, layers whose per-position products are large (``PER_POSITION_MIN``: the CIFAR and ImageNet LC
nets' deeper layers) go one position at a time instead: gather that position's patch matrix (K, N) into a
buffer that stays in cache, ``torch.mm`` it at once, and (backward) add its input gradient straight into the
padded input's window. Same formulas, fewer trips through memory, and MKL's mm with a transposed operand
runs about twice as fast as its bmm; the layout changes between (N, O, oh, ow) and (L, O, N) are done as
2-d transposes. Measured (benchmarks/bench_lc.py --papers, one thread, thread CPU time, load average 4-5 on
2 shared cores, so indicative): CIFAR LC layers at batch 128 take 1.4-1.7x, 2.0-2.2x and 2.0-2.2x conv2d's
time (2.2x, 2.2x, 2.3x before).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from bioscale.errors import BioscaleError

IntPair = int | tuple[int, int]


def _pair(v: IntPair, what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(pair) != 2:
        raise BioscaleError(f"locally-connected {what} must be an int or a pair of ints, got {v!r}.")
    return pair  # type: ignore[return-value]


def lc_out_size(in_size: IntPair, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0
                ) -> tuple[int, int]:
    """Output (height, width) of a locally-connected (or conv) layer: floor((H + 2p - k) / s) + 1."""
    (h, w), (kh, kw) = _pair(in_size, "in_size"), _pair(kernel_size, "kernel_size")
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if min(h, w, kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or oh < 1 or ow < 1:
        raise BioscaleError(
            f"a locally-connected layer with kernel {(kh, kw)}, stride {(sh, sw)} and padding {(ph, pw)} "
            f"does not fit an input of size {(h, w)} (output would be {(oh, ow)}); use a smaller kernel or "
            "stride, more padding, or a larger input."
        )
    return oh, ow


CHUNK_BYTES = 32 * 2**20
"""Unfolded input processed at a time: lc2d works through the output rows in chunks of about this many bytes
of ``cols``, so its transient memory is bounded (not one whole unfolded input) and each chunk is still warm
in cache when the matmul reads it."""


def _transpose_2d(x: Tensor, rows: int) -> Tensor:
    """``x`` viewed as (rows, -1), transposed, contiguous: (-1, rows). One blocked 2-d transpose; copying a
    4-d permutation that moves the innermost dimension far away element by element is ~3x slower on CPU."""
    return x.reshape(rows, -1).t().contiguous()


def _pad_cnhw(x: Tensor, padding: tuple[int, int]) -> Tensor:
    """(N, C, H, W) -> zero-padded (C, Hp, Wp, N), the layout unfold and fold work in."""
    n, c, h, w = x.shape
    ph, pw = padding
    t = _transpose_2d(x, n).view(c, h, w, n)
    if ph == pw == 0:
        return t
    return torch.constant_pad_nd(t, (0, 0, pw, pw, ph, ph))  # writes each element once (no zero-fill pass)


PER_POSITION_MIN = 4 * 2**20
"""Multiply-adds per output position (out_channels * in_channels*kh*kw * batch) from which lc2d works one
position at a time on the CPU: gather that position's (K, N) patch matrix into a buffer that stays in cache
and multiply it at once with ``torch.mm``. For the CIFAR LC net's 2nd and 3rd layers that takes ~40% less time
than gathering whole chunks of ``cols`` and one ``torch.bmm`` (bmm with a transposed operand runs at about
half of mm's speed with MKL, and a chunk of cols goes through main memory twice); below it the Python loop's
few microseconds per position would dominate, and the chunked bmm is kept (and always on GPUs)."""


def _per_position(x: Tensor, o: int, k: int) -> bool:
    """The CPU path; "meta" too, so that ``arch summary`` (which runs on meta) follows the CPU's workspace."""
    return x.device.type in ("cpu", "meta") and o * k * x.shape[0] >= PER_POSITION_MIN


def _window(xp: Tensor, i: int, j: int, kh: int, kw: int, stride: tuple[int, int]) -> Tensor:
    """Position (i, j)'s receptive field in the padded (C, Hp, Wp, N) input: a (C, kh, kw, N) view."""
    r0, c0 = i * stride[0], j * stride[1]
    return xp[:, r0:r0 + kh, c0:c0 + kw]


def _row_chunks(oh: int, ow: int, k: int, n: int, itemsize: int) -> list[tuple[int, int]]:
    rows = max(1, CHUNK_BYTES // max(1, ow * k * n * itemsize))
    return [(i, min(i + rows, oh)) for i in range(0, oh, rows)]


def _cols(xp: Tensor, i0: int, i1: int, kh: int, kw: int, stride: tuple[int, int], ow: int) -> Tensor:
    """Output rows i0:i1 of the unfolded input: ((i1-i0)*ow, C*kh*kw, N), contiguous.

    The batch is the innermost dimension, so gathering the patches copies runs of N contiguous values;
    with NCHW the runs are only kw long, which made this gather ~2.5x slower on CPU.
    """
    sh, sw = stride
    c, n = xp.shape[0], xp.shape[3]
    rows = xp[:, i0 * sh:(i1 - 1) * sh + kh]
    patches = rows.unfold(1, kh, sh).unfold(2, kw, sw)[:, :, :ow]  # (C, i1-i0, ow, N, kh, kw), a view
    return patches.permute(1, 2, 0, 4, 5, 3).reshape((i1 - i0) * ow, c * kh * kw, n).contiguous()


def _fold_into(acc: Tensor, cols: Tensor, i0: int, i1: int, kh: int, kw: int, stride: tuple[int, int],
               ow: int) -> None:
    """Adjoint of ``_cols``: add cols ((i1-i0)*ow, C*kh*kw, N) onto the padded acc (C, Hp, Wp, N).

    One strided add per kernel offset, each reading runs of N contiguous values (~3x faster on CPU than
    permuting cols for ``F.fold``, and no extra copy of cols).
    """
    sh, sw = stride
    c, n = acc.shape[0], acc.shape[3]
    patches = cols.view(i1 - i0, ow, c, kh, kw, n)
    for u in range(kh):
        for v in range(kw):
            r0, c0 = i0 * sh + u, v
            acc[:, r0:r0 + sh * (i1 - i0 - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw] += \
                patches[:, :, :, u, v].permute(2, 0, 1, 3)


def _unpad_nchw(acc: Tensor, in_shape: tuple[int, ...], padding: tuple[int, int]) -> Tensor:
    """(C, Hp, Wp, N) -> (N, C, H, W), contiguous; pixels no window covers stay zero."""
    h, w = in_shape[2:]
    ph, pw = padding
    c, n = acc.shape[0], acc.shape[3]
    inner = acc[:, ph:ph + h, pw:pw + w]  # runs of N contiguous values: a cheap copy when padded
    return _transpose_2d(inner, c * h * w).view(n, c, h, w)


def _positions_first(y: Tensor) -> Tensor:
    """(N, O, oh, ow) -> (oh*ow, O, N), contiguous (bmm falls back to a slow loop on strided views).

    Two cheap transposes: (O, L) within each example, then (N, L*O) as a 2-d matrix."""
    n, o, oh, ow = y.shape
    per_example = y.reshape(n, o, oh * ow).transpose(1, 2).contiguous()  # (N, L, O)
    return _transpose_2d(per_example, n).view(oh * ow, o, n)


def _examples_first(out_l: Tensor, oh: int, ow: int) -> Tensor:
    """The adjoint layout change: (oh*ow, O, N) -> (N, O, oh, ow), contiguous."""
    l, o, n = out_l.shape
    per_example = _transpose_2d(out_l, l * o).view(n, l, o)
    return per_example.transpose(1, 2).contiguous().view(n, o, oh, ow)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in, else the input's (so AMP works like for nn.Conv2d)."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _no_autocast(x: Tensor) -> contextlib.AbstractContextManager:
    """Inside the Function we cast explicitly; autocast must not re-cast (and "meta" has no autocast)."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


class _LC2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, backward_weight: Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
        oh, ow, o, c, kh, kw = weight.shape
        dtype = _compute_dtype(x)
        with _no_autocast(x):
            xc, wc = x.to(dtype), weight.to(dtype)
            k = c * kh * kw
            w_l = wc.reshape(oh * ow, o, k)
            xp = _pad_cnhw(xc, padding)
            n = x.shape[0]
            out_l = xp.new_empty(oh * ow, o, n)  # (L, O, N)
            if _per_position(xc, o, k):
                patch = xp.new_empty(c, kh, kw, n)
                for i in range(oh):
                    for j in range(ow):
                        patch.copy_(_window(xp, i, j, kh, kw, stride))
                        torch.mm(w_l[i * ow + j], patch.view(k, n), out=out_l[i * ow + j])
            else:
                for i0, i1 in _row_chunks(oh, ow, k, n, xp.element_size()):
                    cols = _cols(xp, i0, i1, kh, kw, stride, ow)
                    torch.bmm(w_l[i0 * ow:i1 * ow], cols, out=out_l[i0 * ow:i1 * ow])
                    del cols
            del xp
            out = _examples_first(out_l, oh, ow)  # contiguous (N, O, oh, ow)
            del out_l
            if bias is not None:
                out += bias.to(dtype)
        ctx.save_for_backward(xc, weight, backward_weight)
        ctx.conf = (stride, padding, x.dtype, bias is not None, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        xc, weight, backward_weight = ctx.saved_tensors
        stride, padding, x_dtype, has_bias, bias_dtype = ctx.conf
        oh, ow, o, c, kh, kw = weight.shape
        dtype = xc.dtype
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        with _no_autocast(xc):
            g = grad_out.to(dtype)
            g_l = _positions_first(g)  # (L, O, N)
            k, n = c * kh * kw, xc.shape[0]
            xp = _pad_cnhw(xc, padding) if need_w else None
            acc = xc.new_zeros(c, xc.shape[2] + 2 * padding[0], xc.shape[3] + 2 * padding[1], n) \
                if need_x else None
            if need_x:
                b = (weight if backward_weight is None else backward_weight).to(dtype).reshape(oh * ow, o, k)
            grad_w = weight.new_empty(oh * ow, o, k, dtype=dtype) if need_w else None
            if _per_position(xc, o, k):
                patch = xc.new_empty(c, kh, kw, n)
                grad_patch = xc.new_empty(c, kh, kw, n)
                for i in range(oh):
                    for j in range(ow):
                        pos = i * ow + j
                        if grad_w is not None:
                            patch.copy_(_window(xp, i, j, kh, kw, stride))
                            torch.mm(g_l[pos], patch.view(k, n).t(), out=grad_w[pos])
                        if acc is not None:
                            torch.mm(b[pos].t(), g_l[pos], out=grad_patch.view(k, n))
                            _window(acc, i, j, kh, kw, stride).add_(grad_patch)
            else:
                for i0, i1 in _row_chunks(oh, ow, k, n, xc.element_size()):
                    pos_ = slice(i0 * ow, i1 * ow)
                    if grad_w is not None:
                        cols = _cols(xp, i0, i1, kh, kw, stride, ow)
                        torch.bmm(g_l[pos_], cols.transpose(1, 2), out=grad_w[pos_])
                        del cols
                    if acc is not None:
                        _fold_into(acc, torch.bmm(b[pos_].transpose(1, 2), g_l[pos_]), i0, i1, kh, kw, stride,
                                   ow)
            if grad_w is not None:
                grad_w = grad_w.view(weight.shape).to(weight.dtype)
            if acc is not None:
                grad_x = _unpad_nchw(acc, tuple(xc.shape), padding).to(x_dtype)
            if has_bias and need_b:
                grad_b = g.sum(0).to(bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None


def lc2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1, padding: IntPair = 0,
         backward_weight: Tensor | None = None) -> Tensor:
    """Locally-connected 2d: ``out[n, o, i, j] = sum_{c,u,v} weight[i, j, o, c, u, v] * xpad[n, c, i*s+u,
    j*s+v] + bias[o, i, j]``.

    ``weight``: (out_h, out_w, out_channels, in_channels, kh, kw); ``bias``: (out_channels, out_h, out_w).
    The input gradient is computed with ``backward_weight`` (same shape as ``weight``) when given, which is
    how feedback-alignment-style rules replace W^T; the weight gradient is always the true one.
    ``backward_weight`` never receives a gradient.
    """
    stride_, padding_ = _pair(stride, "stride"), _pair(padding, "padding")
    _check(x, weight, bias, stride_, padding_, backward_weight)
    if backward_weight is not None:
        backward_weight = backward_weight.detach()
    return _LC2d.apply(x, weight, bias, backward_weight, stride_, padding_)


def lc2d_transpose(y: Tensor, weight: Tensor, in_size: IntPair, stride: IntPair = 1, padding: IntPair = 0
                   ) -> Tensor:
    """The adjoint of ``lc2d`` w.r.t. its input: (N, out_channels, out_h, out_w) -> (N, in_channels, H, W).

    This is what lc2d's input gradient computes, as an ordinary differentiable op (w.r.t. ``y`` and
    ``weight``): target propagation's inverse layers with "the same sparse structure as W^T".
    """
    oh, ow, o, c, kh, kw = weight.shape
    stride_, padding_ = _pair(stride, "stride"), _pair(padding, "padding")
    h, w = _pair(in_size, "in_size")
    if lc_out_size((h, w), (kh, kw), stride_, padding_) != (oh, ow):
        raise BioscaleError(
            f"lc2d_transpose: a weight for {oh}x{ow} output positions does not match in_size {(h, w)} with "
            f"kernel {(kh, kw)}, stride {stride_} and padding {padding_}; pass the forward layer's in_size."
        )
    if y.dim() != 4 or tuple(y.shape[1:]) != (o, oh, ow):
        raise BioscaleError(
            f"lc2d_transpose expects y of shape (N, {o}, {oh}, {ow}), got {tuple(y.shape)}."
        )
    n = y.shape[0]
    y_l = _positions_first(y)
    cols = torch.bmm(weight.to(y_l.dtype).reshape(oh * ow, o, c * kh * kw).transpose(1, 2), y_l)
    acc = cols.new_zeros(c, h + 2 * padding_[0], w + 2 * padding_[1], n)
    _fold_into(acc, cols, 0, oh, kh, kw, stride_, ow)
    return _unpad_nchw(acc, (n, c, h, w), padding_)


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
           padding: tuple[int, int], backward_weight: Tensor | None) -> None:
    if weight.dim() != 6:
        raise BioscaleError(
            f"lc2d weight must have 6 dims (out_h, out_w, out_channels, in_channels, kh, kw), got shape "
            f"{tuple(weight.shape)}."
        )
    oh, ow, o, c, kh, kw = weight.shape
    if x.dim() != 4 or x.shape[1] != c:
        raise BioscaleError(
            f"lc2d expects an input of shape (N, {c}, H, W) for this weight, got {tuple(x.shape)}; "
            "check the layer's in_channels."
        )
    if lc_out_size(tuple(x.shape[2:]), (kh, kw), stride, padding) != (oh, ow):
        raise BioscaleError(
            f"lc2d: input of spatial size {tuple(x.shape[2:])} gives "
            f"{lc_out_size(tuple(x.shape[2:]), (kh, kw), stride, padding)} output positions, but the weight "
            f"has {(oh, ow)}; a locally-connected layer only accepts the input size it was built for."
        )
    if bias is not None and tuple(bias.shape) != (o, oh, ow):
        raise BioscaleError(f"lc2d bias must have shape {(o, oh, ow)}, got {tuple(bias.shape)}.")
    if backward_weight is not None and backward_weight.shape != weight.shape:
        raise BioscaleError(
            f"lc2d backward_weight must have the weight's shape {tuple(weight.shape)}, got "
            f"{tuple(backward_weight.shape)}."
        )


class LocallyConnected2d(nn.Module):
    """A conv layer without weight sharing: an independent (in_channels, kh, kw) filter per output position.

    Subclasses that change the backward pass (feedback alignment, sign symmetry) override ``forward`` to
    call ``self._lc(x, backward_weight=their_matrix)``.
    """

    def __init__(self, in_channels: int, out_channels: int, in_size: IntPair, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.in_size = _pair(in_size, "in_size")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.out_size = lc_out_size(self.in_size, self.kernel_size, self.stride, self.padding)
        oh, ow = self.out_size
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(oh, ow, self.out_channels, self.in_channels, kh, kw))
        self.bias = nn.Parameter(torch.empty(self.out_channels, oh, ow)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias: what nn.Conv2d's default amounts to."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def _lc(self, x: Tensor, backward_weight: Tensor | None = None) -> Tensor:
        return lc2d(x, self.weight, self.bias, self.stride, self.padding, backward_weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._lc(x, backward_weight=None)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, in_size={self.in_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"out_size={self.out_size}, bias={self.bias is not None}")
