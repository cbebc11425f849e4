"""Initialisation shared by the nets and their inverses (Bartunov et al. 2018: Glorot init, zero biases)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def glorot_(op: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as Bartunov et al. initialise every layer."""
    with torch.no_grad():
        nn.init.xavier_uniform_(op.weight) if op.weight.dim() == 2 else _glorot_nd(op.weight)
        if getattr(op, "bias", None) is not None:
            op.bias.zero_()


def _glorot_nd(weight: Tensor) -> None:
    # conv (out, in, kh, kw) and LC (oh, ow, out, in, kh, kw): fan_in = in*kh*kw, fan_out = out*kh*kw
    in_c, kh, kw = weight.shape[-3:]
    out_c = weight.shape[-4]
    bound = (6.0 / (in_c * kh * kw + out_c * kh * kw)) ** 0.5
    weight.uniform_(-bound, bound)
