"""AO-SDTP's auxiliary output z = tanh(R h): fixed random features (Bartunov et al. 2018, Algorithm 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RandomFeatures(nn.Module):
    """z = tanh(R h) with R a fixed Glorot-uniform matrix (a buffer: saved, never trained), no bias."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (in_features + out_features))
        self.register_buffer("weight", torch.empty(out_features, in_features).uniform_(-bound, bound))

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(F.linear(h.flatten(1).to(self.weight.dtype), self.weight))
