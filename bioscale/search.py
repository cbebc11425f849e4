"""Random search: a grid's ``search:`` block drawn into ordinary job parameters.

Bartunov et al. 2018 (App. 5.3) ran, for every learning rule and architecture, "random searches over 60 random
configurations drawn from the ranges specified in table 4". Here every combination of the grid's axes gets
``search.n`` configurations; configuration ``i`` sets each searched key to ``draw(distribution, seed, key, i)``.

Each draw is a pure function of (search seed, key, configuration index): it does not depend on the order of
the keys in the file, on which other keys are searched, on the combination of the axes (configuration ``i``
proposes the same learning rate to every rule, so rules are compared on common draws) or on the machine. The
grid's name is deliberately not an input, so a renamed or copied grid draws the same configurations; the seed
is the knob that gives another set.

Sampler: numpy's ``Generator`` (PCG64) seeded by a ``SeedSequence`` of (seed, index, 128 bits of the key's
sha256). numpy documents this stream as stable across platforms and releases (NEP 19), and a SeedSequence
per draw makes each value independent of every other draw without any shared state. optuna's samplers were
not used: they are sequential (a draw depends on the trials before it, and TPE on their results), so a
configuration would change when the search is extended or run in another order; scipy's quasi-random
sequences (``scipy.stats.qmc``) tie each coordinate to the position of its key among the others. Continuous
values are rounded to ``SIGNIFICANT`` significant digits (as Table 5 prints them): exp/log may differ by an
ulp between libms, the rounded value does not, it reads well in a report and round-trips exactly through
JSON (the job id hashes it).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bioscale.errors import GridError
from bioscale.spec import Distribution, GridSpec, SearchSpec

SIGNIFICANT = 6
"""Significant digits of a drawn real number (Table 5 prints six: 0.000757, 0.15008)."""
UNSEARCHABLE = ("seed", "train.epochs")
"""Keys a search may not draw: the seed is a replicate, not a hyperparameter, and the epoch budget is what
successive halving (``promote:``) stops early; both would make configurations incomparable."""


def generator(seed: int, key: str, index: int) -> np.random.Generator:
    """The generator of one draw: PCG64 seeded by SeedSequence([seed, index, *key words])."""
    words = np.frombuffer(hashlib.sha256(key.encode("utf-8")).digest()[:16], dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, *words])))


def round_significant(x: float, digits: int = SIGNIFICANT) -> float:
    return float(f"{x:.{digits}g}")


def draw(dist: Distribution, seed: int, key: str, index: int) -> Any:
    """Configuration ``index``'s value of ``key``."""
    rng = generator(seed, key, index)
    kind, values = dist.kind, dist.values
    if kind == "choice":
        return copy.deepcopy(values[int(rng.integers(len(values)))])
    if kind == "int":
        lo, hi = values
        return int(rng.integers(lo, hi, endpoint=True))
    lo, hi = values
    u = float(rng.random())  # [0, 1), 53 random bits
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if kind == "loguniform" else lo + u * (hi - lo)
    return min(max(round_significant(x), lo), hi)


def space_for(search: SearchSpec, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Distribution]:
    """The keys searched for one job: ``space``, then each ``conditional`` block whose ``where`` matches (a
    later block's distribution replaces an earlier one for the same key)."""
    space = dict(search.space)
    for block in search.conditional:
        if matches(block.where):
            space.update(block.space)
    return space


def configurations(search: SearchSpec, matches: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The ``n`` configurations (key -> drawn value) of one combination of the axes, keys sorted."""
    space = space_for(search, matches)
    return [{key: draw(space[key], search.seed, key, i) for key in sorted(space)} for i in range(search.n)]


def searched_keys(search: SearchSpec) -> list[str]:
    """Every key the search can draw, sorted."""
    keys = set(search.space)
    for block in search.conditional:
        keys |= set(block.space)
    return sorted(keys)


def check_search(grid: GridSpec, sets: dict[str, Any], source: str) -> None:
    """Refuse a search key that is no job's key, a value the key cannot take, a key that is also an axis or
    fixed by --set, or a key that must not be searched; distributions and ranges are checked by the schema."""
    search = grid.search
    if search is None:
        return
    from bioscale.gridkeys import COMPONENTS, grid_key_problem

    axes = {k for block in (grid.axes if isinstance(grid.axes, list) else [grid.axes]) for k in block}
    tail = "Searched keys are dotted paths into a job, like the axes' keys."
    blocks = [("search.space", search.space)]
    for i, block in enumerate(search.conditional, 1):
        where = f"search.conditional entry {i}"
        if not block.space:
            raise GridError(f"{source}: {where}: `space` is empty; give the keys to search for the jobs that match "
                            "`where`, or remove the entry.")
        for key, value in block.where.items():
            problem = grid_key_problem(grid, sets, key, value)
            if problem:
                raise GridError(f"{source}: {where}, where: {problem} Keys in `where` are dotted paths into a job, "
                                "like the axes' keys: one that no job has would silently match nothing.")
        blocks.append((f"{where}, space", block.space))
    if not search.space and not search.conditional:
        raise GridError(f"{source}: search: no key to search; give `space:` (e.g. optim.lr: {{loguniform: "
                        "[1.0e-5, 3.0e-4]}}) or remove the search block.")
    for where, space in blocks:
        for key, dist in space.items():
            parts = key.split(".")
            if key in UNSEARCHABLE or (parts[0] in COMPONENTS and parts[1:] in ([], ["name"])):
                raise GridError(f"{source}: {where}: {key!r} cannot be searched (the rule, arch, dataset and seed "
                                "name a job's cell, and train.epochs is the budget `promote:` stops early); put it "
                                "in `axes` instead.")
            if key in axes:
                raise GridError(f"{source}: {where}: {key!r} is both an axis and a searched key; keep one of them.")
            if key in sets:
                raise GridError(f"{source}: --set {key}=... fixes a searched key, which would make every "
                                "configuration the same job; drop the --set or the key from the search.")
            values = dist.values if dist.kind == "choice" else list(dist.values)
            for value in values:
                problem = grid_key_problem(grid, sets, key, value)
                if problem:
                    raise GridError(f"{source}: {where}: {problem} {tail}")
