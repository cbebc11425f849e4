"""Each stacked member's own random stream: the global generators' state its solo job would have.

A solo job draws everything random from torch's global generators (the init, feedback matrices, brSF's
redraws, target propagation's noise: ``Rule.noise_like``), seeded by its seed. A stack keeps one saved state
per member (CPU, the training device's CUDA generator, Python's ``random``) and swaps it in around each
member's draws (``MemberRNG.use``), so the rule code that draws from the global generator is reused as is and
member m's draws are exactly its solo job's; the states are also what a member's checkpoint saves.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class RNGState:
    cpu: Tensor
    cuda: Tensor | None = None
    python: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def capture(cls, device: torch.device | str = "cpu") -> RNGState:
        device = torch.device(device)
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, random.getstate(), device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        if self.python is not None:
            random.setstate(self.python)


class MemberRNG:
    """The M members' generator states; ``use(m)`` makes member m's the global one for a block of draws."""

    def __init__(self, states: list[RNGState]) -> None:
        self.states = states

    @contextlib.contextmanager
    def use(self, m: int) -> Iterator[None]:
        outer = RNGState.capture(self.states[m].device)
        self.states[m].restore()
        try:
            yield
        finally:
            self.states[m] = RNGState.capture(self.states[m].device)
            outer.restore()
