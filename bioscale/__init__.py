"""bioscale: reproduce and extend benchmarks of biologically-motivated learning rules at scale.

The Python API is ``bioscale.run_grid`` and ``bioscale.load_results`` (see ``bioscale.runner``). They are
imported on first use, so ``import bioscale`` stays cheap and never imports torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# MKL's matrix products give the same bits whatever the thread count (see bioscale.threads); read by MKL at its
# first call, so before torch computes anything, and inherited by the worker processes.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

_LAZY = {"run_grid": "bioscale.runner", "load_results": "bioscale.runner", "RunSummary": "bioscale.runner"}

if TYPE_CHECKING:
    from bioscale.runner import RunSummary, load_results, run_grid

__all__ = ["RunSummary", "__version__", "load_results", "run_grid"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'bioscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
