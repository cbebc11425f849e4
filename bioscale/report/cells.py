"""How one table cell prints a number, a group of seeds or a setting (shared by every layout)."""

from __future__ import annotations

import math
import re
from typing import Any

SETTING_SPLIT = re.compile(r", (?=[A-Za-z_][\w.]*=)")
"""Between the ``key=value`` items of a ``setting`` (a value may hold ", " itself: [0.9, 0.999])."""
SHORT_PREFIXES = ("rule.params.", "arch.params.", "dataset.params.")


def is_number(x: Any) -> bool:
    return x is not None and not isinstance(x, str) and not (isinstance(x, float) and math.isnan(x))


def fmt_number(x: Any) -> str:
    return f"{float(x):.2f}" if is_number(x) else ""


def fmt_delta(x: Any) -> str:
    return f"{float(x):+.2f}" if is_number(x) else ""


def mean_std(mean: Any, std: Any) -> str:
    """"2.60 ± 0.14"; one seed (no std): "2.60"; no value: ""."""
    if not is_number(mean):
        return ""
    return f"{mean:.2f} ± {std:.2f}" if is_number(std) else f"{mean:.2f}"


def setting_label(setting: Any) -> str:
    """A setting as a table shows it: "last_layer_bp=true, optim.lr=0.001". The rule's, arch's and dataset's
    parameters lose their prefix where that leaves no two keys alike; the full keys (what ``--set`` takes)
    are in the csv/json ``setting`` column."""
    if not isinstance(setting, str) or not setting:
        return ""
    items = [item.partition("=") for item in SETTING_SPLIT.split(setting)]
    short = [_short(key) for key, _, _ in items]
    keys = [s if short.count(s) == 1 else key for s, (key, _, _) in zip(short, items, strict=True)]
    return ", ".join(f"{k}={v}" for k, (_, _, v) in zip(keys, items, strict=True))


def _short(key: str) -> str:
    for prefix in SHORT_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
