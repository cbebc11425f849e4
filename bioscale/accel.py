"""The GPU path of a job: bfloat16 autocast (``train.amp``), channels_last (``train.channels_last``) and
``torch.compile`` with optional CUDA graphs (``train.compile``), issue 13 point 3.

An MNIST/CIFAR-sized step on a GPU is bound by kernel launches and Python, not arithmetic: compiling fuses
the small elementwise kernels, CUDA graphs (``reduce-overhead``) replay a whole step's launches at once, and
channels_last with bf16 is the layout and dtype tensor cores run convolutions in. Only bf16 changes what a
job computes (it is in the job id); the other two change speed within float rounding and are run-time.

What can be compiled: the model's forward (and so its backward), called whole by the rule's step, as the
backward rules (bp, fa, ss, frsf, brsf, kp) do; the optimiser step stays eager. Rules that call the model's
layers one at a time (dfa, the target rules) declare ``Rule.compiles_model = False`` and run eager with a
note. Torch-free at import (preflight reads ``compiler_problem``).
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

from bioscale.lazy import lazy

if TYPE_CHECKING:
    import torch as torch_types
    from torch import nn

    from bioscale.rules.base import Rule
    from bioscale.spec import TrainSpec

torch = lazy("torch")

CXX = ("g++", "clang++", "c++")
CC = ("cc", "gcc", "clang")
"""Compilers ``torch.compile`` calls: inductor builds C++ for the CPU; triton builds its launchers with a C
compiler on the GPU. ``$CXX`` / ``$CC`` come first when set."""
BACKEND = "inductor"
"""torch.compile's backend. The tests set ``aot_eager`` (the same graphs, traced, without generated code) to
check many rules quickly; ``mode`` applies to inductor only."""


def autocast_enabled(amp: bool | str, device: torch_types.device) -> bool:
    """Whether the job's forward runs under bf16 autocast: ``amp: bf16`` on any device, ``amp: true`` on
    CUDA only (what it has always meant: a grid that sets it runs in float32 on a laptop)."""
    return amp == "bf16" or (amp is True and device.type == "cuda")


def compiler_problem(mode: str | bool, device: str) -> str | None:
    """Why ``train.compile`` cannot work on this machine (no C/C++ compiler for ``device``), or None."""
    if not mode:
        return None
    kind = device.partition(":")[0]
    if kind == "cpu":
        names, what = CXX, "a C++ compiler (inductor builds the CPU kernels with it)"
    elif kind == "auto":
        names, what = CXX + CC, "a C or C++ compiler (inductor and triton build kernels with one)"
    else:
        names, what = CC, "a C compiler (triton builds its GPU kernel launchers with it)"
    chosen = [os.environ[v] for v in ("CXX", "CC") if os.environ.get(v)]
    if any(shutil.which(name.split()[0]) for name in (*chosen, *names)):
        return None
    return (f"train.compile={mode!r} needs {what}, and none of {', '.join(names)} is on PATH here. Install one "
            "(e.g. apt-get install g++, or `module load gcc` on a cluster), set CXX/CC, or set "
            "train.compile=false.")


def channels_last(model: nn.Module) -> nn.Module:
    """The model's 4-d parameters and buffers (conv weights, conv feedback matrices) in channels_last, in
    place; other tensors (linear, the LC layer's 6-d weights) are left as they are."""
    return model.to(memory_format=torch.channels_last)


def nhwc(x: Any) -> Any:
    """A 4-d input batch in channels_last; anything else (flat data, detection's lists) unchanged."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def compile_model(rule: Rule, mode: str) -> str:
    """Point ``rule.model`` at ``torch.compile`` of it (mode ``default``, ``reduce-overhead`` or
    ``max-autotune``) when the rule's step calls the model whole; returns the note for the job's result. The
    plain model stays what the trainer evaluates and checkpoints (same parameters, no ``_orig_mod`` keys)."""
    setting = f"train.compile={mode}"
    if not rule.compiles_model:
        return f"{setting} not applied: {rule.eager_reason} (ran eager)"
    assert rule.model is not None
    inductor = BACKEND == "inductor"
    rule.model = torch.compile(rule.model, backend=BACKEND, mode=None if mode == "default" or not inductor else mode)
    return f"{setting}: model forward compiled"


def step_marker(mode: str | bool, device: torch_types.device) -> Any:
    """``torch.compiler.cudagraph_mark_step_begin`` for CUDA graphs (``reduce-overhead`` on CUDA): called
    before each training step, it tells the graph trees a new iteration starts, so the previous step's
    outputs may be overwritten. None otherwise."""
    if mode == "reduce-overhead" and device.type == "cuda":
        return torch.compiler.cudagraph_mark_step_begin
    return None


def apply(model: nn.Module, rule: Rule, train: TrainSpec, device: torch_types.device) -> list[str]:
    """What happens once the rule is set up (``channels_last`` comes before, when the optimisers do not exist
    yet): compile, and the notes to record in the job's ``rule_setup``."""
    notes = []
    if train.amp is True and device.type != "cuda":
        notes.append(f"train.amp=true: float32 on {device.type} (bf16 autocast there needs amp: bf16)")
    if train.compile:
        notes.append(compile_model(rule, train.compile))
    return notes


def describe(base: str | None, notes: list[str]) -> str | None:
    """The rule's own setup line followed by the notes."""
    parts = [p for p in (base, *notes) if p]
    return "; ".join(parts) or None


__all__ = ["apply", "autocast_enabled", "channels_last", "compile_model", "compiler_problem", "describe", "nhwc",
           "step_marker"]
