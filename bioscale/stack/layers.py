"""Stacked layers: M members' weights in one tensor with a leading member dimension.

Activations are [M, B, ...]: member m's batch is row m. Each stacked module is built from the M solo modules
of a ``LayeredNet`` and keeps the solo module's parameter and buffer names, each tensor being the members'
tensors stacked on a new dim 0, so member m's solo ``state_dict`` is ``{k: v[m]}`` (``member_state_dict``).

- Linear: one batched matmul [M, B, in] @ [M, in, out]. Feedback layers: ``feedback_matmul`` (grad_x = g B,
  grad_W = g^T x, B per member: the rule of ``bioscale.layers.feedback``'s ``_LinearFeedback``).
- Conv2d: one grouped convolution over M*C channels (groups = M); feedback layers reuse
  ``conv2d_feedback`` (``convolution_backward`` with the members' B in the weight slot, grouped alike).
- LocallyConnected2d: ``F.unfold`` over the M*B images, then per (member, position) matmuls; the input
  gradient through ``feedback_matmul`` with B for feedback layers, ``F.unfold``'s adjoint folds it back.
- Target propagation's inverses: the same three ops transposed (grouped ``conv_transpose2d``, ``F.fold``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioscale.errors import BioscaleError
from bioscale.layers import feedback as fb
from bioscale.layers import inverse as inv
from bioscale.layers.locally_connected import LocallyConnected2d, lc2d
from bioscale.layers.random_features import RandomFeatures
from bioscale.models.base import LayeredNet

# ----------------------------------------------------------------------------------------------- autograd


class _FeedbackMatmul(torch.autograd.Function):
    """out = x @ W^T over leading batch dims; grad_x = grad @ B (B replaces W); grad_W = grad^T @ x."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, feedback)
        return torch.matmul(x, weight.transpose(-1, -2))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        grad_x = grad.matmul(feedback.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        grad_w = grad.transpose(-1, -2).matmul(x.to(grad.dtype)) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def feedback_matmul(x: Tensor, weight: Tensor, feedback: Tensor) -> Tensor:
    return _FeedbackMatmul.apply(x, weight, feedback.detach())


# ------------------------------------------------------------------------------------------ feedback B


class StackedMatrixFeedback(nn.Module):
    """Members' stored B (fa, kp; dfa's direct feedback): ``matrix`` [M, ...]."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.empty(shape))

    def for_step(self, weight: Tensor) -> Tensor:
        return self.matrix


class StackedSignFeedback(nn.Module):
    """B = sign(W) * scale_m (sign-symmetry); ``scale`` [M] is each solo layer's float scale (not saved, as solo)."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(m), persistent=False)

    def for_step(self, weight: Tensor) -> Tensor:
        w = weight.detach()
        return torch.sign(w).mul_(self.scale.to(w.dtype).view(-1, *[1] * (w.dim() - 1)))


class StackedSignMagnitudeFeedback(nn.Module):
    """B = |M_m| * sign(W) (frSF, brSF); ``redraw_`` redraws each member's |M| from its own stream."""

    def __init__(self, shape: tuple[int, ...], init: fb.FeedbackInit, dist: fb.FeedbackDist) -> None:
        super().__init__()
        self.init, self.dist = init, dist
        self.register_buffer("magnitude", torch.empty(shape))

    def for_step(self, weight: Tensor) -> Tensor:
        return torch.sign(weight.detach()).mul_(self.magnitude)

    def redraw_member_(self, m: int) -> None:
        """Member m's redraw, from the global generator (the caller swaps in member m's state):
        ``SignMagnitudeFeedback.redraw_`` on member m's slice."""
        fb.draw_feedback_(self.magnitude[m], self.init, self.dist).abs_()


def _stack_feedback(source: nn.Module, m: int, shape: tuple[int, ...]) -> nn.Module:
    if type(source) is fb.MatrixFeedback:
        return StackedMatrixFeedback((m, *shape))
    if type(source) is fb.SignFeedback:
        return StackedSignFeedback(m)
    if type(source) is fb.SignMagnitudeFeedback:
        return StackedSignMagnitudeFeedback((m, *shape), source.init, source.dist)
    raise BioscaleError(f"no stacked version of the feedback source {type(source).__name__}: a stack would "
                        "compute something else than the solo runs. Run these jobs unstacked (--stack 1).")


class _FeedbackSwitch:
    feedback: nn.Module | None
    use_backprop: bool = False

    def _feedback(self, x: Tensor, weight: Tensor) -> Tensor | None:
        """The members' B when the input gradient will be needed and the layer is a feedback layer, else None."""
        if self.feedback is None or self.use_backprop or not torch.is_grad_enabled() or not x.requires_grad:
            return None
        return self.feedback.for_step(weight)


# --------------------------------------------------------------------------------------------- forward ops


class StackedLinear(_FeedbackSwitch, nn.Module):
    """M linear layers: x [M, B, in] -> [M, B, out]; ``weight`` [M, out, in], ``bias`` [M, out]."""

    def __init__(self, m: int, in_features: int, out_features: int, bias: bool, feedback: nn.Module | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(m, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(m, out_features)) if bias else None
        self.feedback = feedback

    def forward(self, x: Tensor) -> Tensor:
        b = self._feedback(x, self.weight)
        if b is None and self.bias is not None and x.dim() == 3:  # bias and matmul in one kernel
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        out = torch.matmul(x, self.weight.transpose(1, 2)) if b is None else feedback_matmul(x, self.weight, b)
        return out if self.bias is None else out + self.bias.unsqueeze(1)


class StackedConv2d(_FeedbackSwitch, nn.Module):
    """M conv layers as one grouped convolution: x [M, B, C, H, W] is read as [B, M*C, H, W]."""

    def __init__(self, m: int, conv: nn.Conv2d, feedback: nn.Module | None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise BioscaleError(f"cannot stack {conv}: only zero, numeric padding is supported.")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight = nn.Parameter(torch.empty(m, *conv.weight.shape))
        self.bias = nn.Parameter(torch.empty(m, *conv.bias.shape)) if conv.bias is not None else None
        self.feedback = feedback

    def forward(self, x: Tensor) -> Tensor:
        m, n = x.shape[:2]
        xg = x.transpose(0, 1).reshape(n, m * x.shape[2], *x.shape[3:])
        w = self.weight.reshape(-1, *self.weight.shape[2:])
        bias = self.bias.reshape(-1) if self.bias is not None else None
        b = self._feedback(x, self.weight)
        groups = m * self.groups
        if b is None:
            out = F.conv2d(xg, w, bias, self.stride, self.padding, self.dilation, groups)
        else:
            out = fb.conv2d_feedback(xg, w, bias, b.reshape(w.shape), self.stride, self.padding, self.dilation,
                                     groups)
        return out.view(n, m, -1, *out.shape[2:]).transpose(0, 1)


def _unfold(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """[M, B, C, H, W] -> the members' patch matrices [M, L, B, K] (K = C*kh*kw in the LC weight's order)."""
    m, n = x.shape[:2]
    cols = F.unfold(x.reshape(m * n, *x.shape[2:]), kernel, padding=padding, stride=stride)  # [M*B, K, L]
    return cols.view(m, n, cols.shape[1], cols.shape[2]).permute(0, 3, 1, 2)


class StackedLC2d(_FeedbackSwitch, nn.Module):
    """M locally-connected layers; ``weight`` [M, oh, ow, O, C, kh, kw], ``bias`` [M, O, oh, ow]."""

    def __init__(self, m: int, lc: LocallyConnected2d, feedback: nn.Module | None) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = lc.kernel_size, lc.stride, lc.padding
        self.weight = nn.Parameter(torch.empty(m, *lc.weight.shape))
        self.bias = nn.Parameter(torch.empty(m, *lc.bias.shape)) if lc.bias is not None else None
        self.feedback = feedback

    batched_on: ClassVar[tuple[str, ...]] = ("cuda",)
    """Device types where the members go through one batched matmul (elsewhere ``_per_member``); the tests
    add "cpu" to check that path on the CPU too."""

    def forward(self, x: Tensor) -> Tensor:
        b = self._feedback(x, self.weight)
        if x.device.type not in self.batched_on:
            return self._per_member(x, b)
        m, n = x.shape[:2]
        oh, ow, o = self.weight.shape[1:4]
        cols = _unfold(x, self.kernel_size, self.stride, self.padding)
        w = self.weight.reshape(m, oh * ow, o, -1)
        out = torch.matmul(cols, w.transpose(-1, -2)) if b is None else feedback_matmul(cols, w, b.reshape(w.shape))
        out = out.permute(0, 2, 3, 1).reshape(m, n, o, oh, ow)  # [M, L, B, O] -> [M, B, O, oh, ow]
        return out if self.bias is None else out + self.bias.unsqueeze(1)


    def _per_member(self, x: Tensor, b: Tensor | None) -> Tensor:
        """On the CPU, member by member through the solo layer's ``lc2d``: it saves each input, not its unfolded
        patches, and works one output position at a time in a cache-sized buffer, where the batched path
        (one matmul over [M, positions, B, patch]) took 1.9x a solo layer's memory at M = 1 and ran at
        0.3-0.55x its speed (benchmarks/bench_stack.py). A CPU gains nothing from batching members (issue 13:
        the overhead a stack removes is ~13% of a CPU step); ``unbind`` gives all members one gradient node."""
        m = x.shape[0]
        biases = self.bias.unbind(0) if self.bias is not None else [None] * m
        feedback = b.unbind(0) if b is not None else [None] * m
        return torch.stack([lc2d(xm, w, bias, self.stride, self.padding, fm) for xm, w, bias, fm
                            in zip(x.unbind(0), self.weight.unbind(0), biases, feedback, strict=True)])


def _stack_op(op: nn.Module, m: int) -> nn.Module:
    feedback = None
    if fb.is_feedback_layer(op):
        feedback = _stack_feedback(op.feedback, m, tuple(op.weight.shape))
    if type(op) in (nn.Linear, fb.FeedbackLinear):
        return StackedLinear(m, op.in_features, op.out_features, op.bias is not None, feedback)
    if type(op) in (nn.Conv2d, fb.FeedbackConv2d):
        return StackedConv2d(m, op, feedback)
    if type(op) in (LocallyConnected2d, fb.FeedbackLocallyConnected2d):
        return StackedLC2d(m, op, feedback)
    raise BioscaleError(f"no stacked version of a {type(op).__name__} layer (stacks take Linear, Conv2d and "
                        "LocallyConnected2d and their feedback versions). Run these jobs unstacked (--stack 1).")


# --------------------------------------------------------------------------------------------- inverses


class StackedInverseLinear(nn.Module):
    def __init__(self, m: int, g: inv.InverseLinear) -> None:
        super().__init__()
        self.out_shape = g.out_shape
        self.linear = StackedLinear(m, g.linear.in_features, g.linear.out_features, True, None)

    def forward(self, h: Tensor) -> Tensor:
        m, n = h.shape[:2]
        return torch.tanh(self.linear(h.flatten(2)).view(m, n, *self.out_shape))


class StackedInverseConv2d(nn.Module):
    def __init__(self, m: int, g: inv.InverseConv2d) -> None:
        super().__init__()
        self.out_shape, self.stride, self.padding, self.dilation = g.out_shape, g.stride, g.padding, g.dilation
        self.weight = nn.Parameter(torch.empty(m, *g.weight.shape))
        self.bias = nn.Parameter(torch.empty(m, *g.bias.shape))

    def forward(self, h: Tensor) -> Tensor:
        m, n = h.shape[:2]
        kh, kw = self.weight.shape[-2:]
        out_pad = []
        for dim, k in enumerate((kh, kw)):  # as InverseConv2d.pre_activation
            size = (h.shape[3 + dim] - 1) * self.stride[dim] - 2 * self.padding[dim] + self.dilation[dim] * (k - 1) + 1
            out_pad.append(self.out_shape[1 + dim] - size)
        hg = h.transpose(0, 1).reshape(n, m * h.shape[2], *h.shape[3:])
        out = F.conv_transpose2d(hg, self.weight.reshape(-1, *self.weight.shape[2:]), self.bias.reshape(-1),
                                 self.stride, self.padding, tuple(out_pad), m, self.dilation)
        return torch.tanh(out.view(n, m, *self.out_shape).transpose(0, 1))


class StackedInverseLC2d(nn.Module):
    def __init__(self, m: int, g: inv.InverseLC2d) -> None:
        super().__init__()
        self.out_shape, self.in_size, self.stride, self.padding = g.out_shape, g.in_size, g.stride, g.padding
        self.weight = nn.Parameter(torch.empty(m, *g.weight.shape))
        self.bias = nn.Parameter(torch.empty(m, *g.bias.shape))

    def forward(self, h: Tensor) -> Tensor:
        m, n = h.shape[:2]
        oh, ow, o, c, kh, kw = self.weight.shape[1:]
        y = h.reshape(m, n, o, oh * ow).permute(0, 3, 1, 2)  # [M, L, B, O]
        cols = torch.matmul(y, self.weight.reshape(m, oh * ow, o, -1))  # [M, L, B, K]: W^T y per position
        cols = cols.permute(0, 2, 3, 1).reshape(m * n, c * kh * kw, oh * ow)
        out = F.fold(cols, self.in_size, (kh, kw), padding=self.padding, stride=self.stride)
        return torch.tanh(out.view(m, n, *self.out_shape) + self.bias.unsqueeze(1))


def _stack_inverse(g: nn.Module, m: int) -> nn.Module:
    if type(g) is inv.InverseLinear:
        return StackedInverseLinear(m, g)
    if type(g) is inv.InverseConv2d:
        return StackedInverseConv2d(m, g)
    if type(g) is inv.InverseLC2d:
        return StackedInverseLC2d(m, g)
    raise BioscaleError(f"no stacked version of the inverse {type(g).__name__}; run these jobs unstacked.")


class StackedRandomFeatures(nn.Module):
    """AO-SDTP's z = tanh(R_m h) per member; ``weight`` [M, aux, in] (a buffer, as solo)."""

    def __init__(self, m: int, rf: RandomFeatures) -> None:
        super().__init__()
        self.register_buffer("weight", torch.empty(m, *rf.weight.shape))

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(torch.matmul(h.flatten(2).to(self.weight.dtype), self.weight.transpose(1, 2)))


# ------------------------------------------------------------------------------------------------ the net


class StackedLayer(nn.Module):
    """h = activation(op(h_prev)) per member; flattens [M, B, ...] to [M, B, features] for FC ops."""

    def __init__(self, op: nn.Module, activation: nn.Module, flatten: bool, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.op, self.activation, self.flatten = op, activation, flatten
        self.in_shape, self.out_shape = in_shape, out_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.op(x.flatten(2) if self.flatten else x))


class StackedNet(nn.Module):
    """M ``LayeredNet``s of one architecture as one module: x [M, B, ...] -> logits [M, B, classes]."""

    def __init__(self, m: int, layers: list[StackedLayer]) -> None:
        super().__init__()
        self.members = m
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == len(self.layers[0].in_shape) + 1:  # one batch for every member (evaluation)
            x = x.unsqueeze(0).expand(self.members, *x.shape)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_all(self, x: Tensor) -> list[Tensor]:
        hs = []
        for layer in self.layers:
            x = layer(x)
            hs.append(x)
        return hs

    @property
    def output_layer(self) -> StackedLayer:
        return self.layers[-1]  # type: ignore[return-value]

    def feedback_ops(self) -> list[nn.Module]:
        """The ops with a feedback B, in the solo model's ``named_modules`` order (a rule's ``_layers``)."""
        return [mod for mod in self.modules() if isinstance(mod, _FeedbackSwitch) and mod.feedback is not None]

    # -- members in and out --------------------------------------------------------------------------

    def load_members(self, models: list[nn.Module]) -> None:
        """Copy each member's tensors (and sign-symmetry's float scales) into slice m."""
        own = self.state_dict()
        sds = [mdl.state_dict() for mdl in models]
        for i, sd in enumerate(sds):
            if set(sd) != set(own):
                extra, missing = sorted(set(sd) - set(own)), sorted(set(own) - set(sd))
                raise BioscaleError(f"member {i} does not fit the stack: solo tensors {extra} have no stacked "
                                    f"counterpart, stacked {missing} no solo one. Run these jobs unstacked.")
        with torch.no_grad():
            for k, t in own.items():
                for i, sd in enumerate(sds):
                    if tuple(sd[k].shape) != tuple(t.shape[1:]):
                        raise BioscaleError(f"member {i}'s {k} has shape {tuple(sd[k].shape)}, the stack's "
                                            f"{tuple(t.shape[1:])}: the members' architectures differ.")
                    t[i].copy_(sd[k])
            solo = [dict(mdl.named_modules()) for mdl in models]
            for name, mod in self.named_modules():
                if isinstance(mod, StackedSignFeedback):
                    mod.scale.copy_(torch.tensor([float(s[name].scale) for s in solo]))

    def member_state_dict(self, m: int) -> dict[str, Tensor]:
        """Member m's solo ``state_dict`` (copies)."""
        return {k: v[m].detach().clone() for k, v in self.state_dict().items()}

    def bind_member(self, m: int, model: nn.Module) -> None:
        """Make member m's solo model hold slice m of this stack's tensors instead of its own copies.

        Its parameters and (persistent) buffers keep their identity, so its optimiser, feedback sources and
        caches still refer to them, but their storage becomes the stack's (``.data`` rebinding): the solo model
        always reads the stack's current values and costs no memory of its own (a stack of M CIFAR LC jobs held
        M extra copies of the weights and B). Nothing but loading a member's checkpoint should write to it; a
        write there is a write to the stack. Idempotent.
        """
        own = self.state_dict()
        solo = model.state_dict(keep_vars=True)
        if set(solo) != set(own):
            raise BioscaleError(f"a solo model with tensors {sorted(set(solo) ^ set(own))} not in both does not "
                                "fit this stack.")
        for k, t in solo.items():
            t.data = own[k][m]  # unconditionally: pointers cannot tell tensors apart on the meta device


def stack_models(models: list[nn.Module]) -> StackedNet:
    """One ``StackedNet`` holding the M prepared solo ``LayeredNet``s (same architecture, same rule)."""
    m = len(models)
    first = models[0]
    for i, mdl in enumerate(models):
        if type(mdl) is not LayeredNet:
            raise BioscaleError(f"member {i} is a {type(mdl).__name__}; stacks take the layered architectures "
                                "(fc, lc, conv) only.")
    layers = []
    for layer in first.layers:
        if type(layer.activation) not in (nn.Tanh, nn.Identity, nn.ReLU):
            raise BioscaleError(f"no stacked version of the activation {type(layer.activation).__name__}.")
        stacked = StackedLayer(_stack_op(layer.op, m), type(layer.activation)(), layer.flatten,
                               tuple(layer.in_shape), tuple(layer.out_shape))
        direct = getattr(layer, "direct_feedback", None)
        if direct is not None:  # DFA's B_l
            stacked.direct_feedback = StackedMatrixFeedback((m, *direct.matrix.shape))
        layers.append(stacked)
    net = StackedNet(m, layers)
    inverses = getattr(first, "inverses", None)
    if inverses is not None:
        net.inverses = nn.ModuleDict({k: _stack_inverse(g, m) for k, g in inverses.items()})
    aux = getattr(first, "aux_features", None)
    if aux is not None:
        net.aux_features = StackedRandomFeatures(m, aux)
    known = {"layers", "inverses", "aux_features"}
    extra = [n for n, _ in first.named_children() if n not in known]
    if extra:
        raise BioscaleError(f"the members carry modules {extra} a stack does not know; run them unstacked.")
    ref = next(first.parameters())
    net.to(device=ref.device, dtype=ref.dtype)
    net.load_members(models)
    return net
