"""The papers' published numbers, shipped as package data with the source of every number."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from bioscale.report import names

REFERENCE_FILES = ("bartunov2018.yaml", "xiao2018.yaml", "biotorch2021.yaml")


@lru_cache(maxsize=1)
def load_references() -> tuple[dict[str, Any], ...]:
    """Every published entry: dataset, arch, rule, schedule, errors in %, where it comes from, and ``setup``:
    what the paper trained on and for how long ("full MNIST, 500 epochs"), so a reader comparing our short
    runs with it knows why they differ (None where the file does not say)."""
    entries = []
    for name in REFERENCE_FILES:
        doc = yaml.safe_load(resources.files("bioscale.references").joinpath(name).read_text())
        setups = doc.get("setup") or {}
        for entry in doc["entries"]:
            entries.append({**entry, "paper": doc["paper"], "role": doc["role"],
                            "source": f"{doc['citation']}, {entry['table']}", "setup": setups.get(entry["table"])})
    return tuple(entries)


def find_reference(dataset: str, arch: str, rule: str, schedule: str, role: str = "primary"
                   ) -> dict[str, Any] | None:
    """The paper's entry for this cell (``role="secondary"``: an independent benchmark's), or None. A dataset
    is compared with the paper dataset its registration names (mnist-5k, a subset of MNIST: MNIST's
    numbers, so expect a higher error; the report says so)."""
    paper_dataset = names.paper_dataset(dataset)
    if paper_dataset is None:
        return None
    for entry in load_references():
        if entry["role"] == role and (entry["dataset"], entry["arch"], entry["rule"], entry["schedule"]) == (
                paper_dataset, arch, rule, schedule):
            return entry
    return None
