"""Alignment diagnostics: how far a rule's update is from backprop's, and how far B is from W.

Both are angles in degrees between flattened tensors (0: same direction, 90: orthogonal). They are measured
on one batch without disturbing training: no optimiser step, every ``.grad`` restored, buffers (batch-norm
running statistics) restored, train/eval modes restored, and the global RNG left where it was. Both gradient
passes start from the same RNG state, so dropout masks (if any) are the same in the rule's pass and in
backprop's, and the angle measures the rule, not the noise.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from bioscale.layers.feedback import MatrixFeedback, SignMagnitudeFeedback


def angle_deg(a: Tensor, b: Tensor) -> float | None:
    """Angle between ``a`` and ``b`` seen as flat vectors, in degrees; None when either is all zeros."""
    a64, b64 = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    norm = a64.norm() * b64.norm()
    if not bool(norm > 0):
        return None
    cos = float((a64 @ b64) / norm)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def preserved_training_state(model: nn.Module) -> Iterator[None]:
    """Run gradient passes on ``model`` and leave no trace: grads, buffers, modes and the RNG come back."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    # Feedback matrices are not touched by a gradient pass; the rest (running stats) may be.
    skip = {id(b) for m in model.modules() if isinstance(m, (MatrixFeedback, SignMagnitudeFeedback))
            for b in m.buffers(recurse=False)}
    buffers = [(b, b.detach().clone()) for b in model.buffers() if id(b) not in skip]
    with torch.random.fork_rng(devices=_devices(model)):
        try:
            model.train()
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, mode in modes:
                m.training = mode
            for p, g in zip(params, grads, strict=True):
                p.grad = g


def weight_grads(model: nn.Module, layers: Mapping[str, nn.Module], backward: Callable[[], object]
                 ) -> dict[str, Tensor]:
    """The weight gradient of each layer after one ``backward()`` pass from zero grads, from a fixed RNG
    state (the caller's): call inside ``preserved_training_state``."""
    for p in model.parameters():
        p.grad = None
    with torch.random.fork_rng(devices=_devices(model)):
        backward()
    out = {}
    for name, layer in layers.items():
        g = layer.weight.grad
        out[name] = g.detach().clone() if g is not None else torch.zeros_like(layer.weight)
    return out


def gradient_angles(model: nn.Module, layers: Mapping[str, nn.Module], rule_backward: Callable[[], object],
                    bp_backward: Callable[[], object]) -> dict[str, float]:
    """``angle_grad_bp/<name>``: the rule's weight gradient vs backprop's on the same batch."""
    with preserved_training_state(model):
        rule = weight_grads(model, layers, rule_backward)
        bp = weight_grads(model, layers, bp_backward)
    out = {}
    for name in layers:
        angle = angle_deg(rule[name], bp[name])
        if angle is not None:
            out[f"angle_grad_bp/{name}"] = angle
    return out


def weight_feedback_angles(layers: Mapping[str, nn.Module]) -> dict[str, float]:
    """``angle_w_b/<name>``: W vs the feedback matrix B its layer sends the error back through."""
    out = {}
    with torch.no_grad():
        for name, layer in layers.items():
            angle = angle_deg(layer.weight, layer.feedback_weight)
            if angle is not None:
                out[f"angle_w_b/{name}"] = angle
    return out


@contextlib.contextmanager
def backprop_mode(layers: Mapping[str, nn.Module]) -> Iterator[None]:
    """Make feedback layers plain backprop for the duration (to measure the true gradient)."""
    saved = [(layer, layer.use_backprop) for layer in layers.values()]
    try:
        for layer, _ in saved:
            layer.use_backprop = True
        yield
    finally:
        for layer, mode in saved:
            layer.use_backprop = mode
