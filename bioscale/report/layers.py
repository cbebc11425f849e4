"""The paper's names for a net's layers ("LC 1", "hidden 2", "output") in place of module paths
("layers.0.op"), for the alignment-angle plots.

Derived from the job's spec, without torch: the arch's registration says whether it is a layered net (the
papers' FC/LC/conv nets, ``bioscale.models.presets``), its parameters (or Table 3's preset for the dataset's
family, where they are left at None) say how many locally connected or conv layers (``layers``) and hidden
fully-connected layers (``hidden``) come before the output. This works for every store already on disk,
whose metrics only hold module paths. Other nets (ResNet-18, AlexNet) keep their module paths, which are
torchvision's names.
"""

from __future__ import annotations

from typing import Any

from bioscale.catalog import ARCHS, DATASETS
from bioscale.models import presets
from bioscale.spec import JobSpec


def layer_names(spec: JobSpec | None) -> dict[str, str]:
    """``{"layers.0.op": "LC 1", ..., "layers.3.op": "output"}`` for a layered net; {} otherwise."""
    if spec is None or spec.arch.name not in ARCHS or spec.dataset.name not in DATASETS:
        return {}
    record = ARCHS.get(spec.arch.name)
    if not record.layered:
        return {}
    family = DATASETS.get(spec.dataset.name).family
    params: dict[str, Any] = spec.arch.params
    local = "layers" in record.params.model_fields  # the LC/conv nets: a stack before the FC layers
    stack = params.get("layers") if local else []
    hidden = params.get("hidden")
    if stack is None:
        stack = presets.LC_LAYERS.get(family)
    if hidden is None:
        hidden = (presets.LC_HIDDEN if local else presets.FC_HIDDEN).get(family)
    if stack is None or hidden is None:
        return {}
    # an arch reported under its own column is named by it ("LC"); one in another's column by its name
    # (the BP ConvNet, in LC's column: "conv")
    kind = record.display if record.paper_column == record.display else record.name
    names = [f"{kind} {i + 1}" for i in range(len(stack))] + [f"hidden {i + 1}" for i in range(len(hidden))]
    names.append("output")
    return {f"layers.{i}.op": name for i, name in enumerate(names)}


def display(key: str, names: dict[str, str]) -> str:
    """A diagnostics key's layer ("angle_w_b/layers.0.op") as the paper names it, else its module path."""
    module = key.split("/", 1)[1] if "/" in key else key
    return names.get(module, module)
