"""How one table cell prints a number or a group of seeds (shared by every layout)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def mean_std(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    if len(v) == 0:
        return ""
    if len(v) == 1:
        return fmt_number(v.iloc[0])
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def fmt_number(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.2f}"
