"""Reading a job's checkpoint safely.

A checkpoint is a pickle, and unpickling an arbitrary pickle runs whatever code it names. So checkpoints are
read with ``torch.load(..., weights_only=True)``, whose unpickler builds only tensors, plain containers and
numbers and refuses every other global: a crafted or foreign file is refused before any of it runs. The trainer
saves exactly those types (see ``Trainer.save``: state dicts of tensors, ints, floats, bools, None, strings,
lists, tuples and dicts; RNG states as uint8 tensors; ``random.getstate()``, a tuple of ints), so nothing needs
adding to torch's allow-list (``torch.serialization.add_safe_globals``), and nothing is added. What loads is then
checked against the shape the trainer writes, so a foreign file fails here with a clear reason rather than half
way through being applied to a model.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

KEYS: dict[str, tuple[type, ...]] = {
    "epochs_done": (int,),
    "model": (dict,),
    "rule": (dict,),
    "torch_rng": (torch.Tensor,),
    "cuda_rng": (list, tuple),
    "python_rng": (tuple,),
    "wall_time_s": (int, float),
}
"""What ``Trainer.save`` writes, and the type of each entry."""


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from: torn, foreign, or not what the trainer writes."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint whose pickle names code or classes outside the allow-list: refused, never executed."""


def load_checkpoint(path: Path, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """The trainer's checkpoint at ``path``, loaded with ``weights_only=True`` and checked against ``KEYS``.

    Raises ``UnsafeCheckpoint`` for a pickle that names anything but tensors and plain data (its code is not
    run), ``CheckpointError`` for any other file that is not a checkpoint the trainer wrote."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(f"refused by the safe loader: {_unpickler_reason(exc)}; nothing in it was run") \
            from None
    except Exception as exc:  # torn zip, empty file, garbage: torch raises many kinds
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{type(exc).__name__}: {first}"[:300]) from None
    check_state(state)
    return state


def check_state(state: Any) -> None:
    """Raise ``CheckpointError`` unless ``state`` has every entry ``Trainer.save`` writes, of the right type."""
    if not isinstance(state, dict):
        raise CheckpointError(f"it holds a {type(state).__name__}, not the trainer's dict")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise CheckpointError(f"it has no {', '.join(repr(k) for k in missing)}: not a checkpoint this trainer "
                              "wrote, or a damaged one")
    for key, types in KEYS.items():
        value = state[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise CheckpointError(f"its {key!r} is a {type(value).__name__}, expected "
                                  f"{' or '.join(t.__name__ for t in types)}")
    if state["epochs_done"] < 0:
        raise CheckpointError(f"its 'epochs_done' is {state['epochs_done']}")
    if not all(isinstance(s, torch.Tensor) for s in state["cuda_rng"]):
        raise CheckpointError("its 'cuda_rng' holds something other than tensors")


def _unpickler_reason(exc: BaseException) -> str:
    """The one informative line of torch's message, without its advice to retry with ``weights_only=False``."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", text, re.DOTALL)
    reason = match.group(1) if match else (text.strip().splitlines() or [type(exc).__name__])[-1]
    return " ".join(reason.split())[:200]
