"""The one compatibility check: can rule x arch x dataset run? Pure (reads records, builds nothing), and
used by grid validation, ``bioscale list`` and the contract tests alike."""

from __future__ import annotations

from pydantic import BaseModel

from bioscale.catalog import ARCHS, DATASETS, RULES, ArchRecord, DatasetRecord, RuleRecord


def problems(rule: RuleRecord, arch: ArchRecord, dataset: DatasetRecord,
             arch_params: BaseModel | None = None) -> list[str]:
    """Why this combination cannot run (empty: it can). ``arch_params`` are the job's validated arch
    parameters (their defaults if None): an explicit layer list can make a preset-less dataset work."""
    out = []
    if rule.needs_layered and not arch.layered:
        out.append(f"rule {rule.name!r} needs a layered (sequential) architecture and {arch.name!r} is not one")
    return out + arch_problems(arch, dataset, arch_params)


def arch_problems(arch: ArchRecord, dataset: DatasetRecord, arch_params: BaseModel | None = None) -> list[str]:
    """Why ``arch`` cannot be built for ``dataset`` (whatever the rule)."""
    if arch.task != dataset.task:
        return [f"arch {arch.name!r} is for {arch.task} and dataset {dataset.name!r} is a {dataset.task} dataset"]
    families = arch.presets(arch_params if arch_params is not None else arch.params()) if arch.presets else None
    if families is not None and dataset.family not in families:
        return [f"arch {arch.name!r} has no preset for {dataset.family}-shaped data like {dataset.name!r} (its "
                f"presets: {', '.join(families) or 'none'}); give its layer sizes in arch.params"]
    return []


def compatible(rule: str, arch: str, dataset: str) -> bool:
    """True when the three (with default parameters) can run together."""
    return not problems(RULES.get(rule), ARCHS.get(arch), DATASETS.get(dataset))


def alternatives(rule: RuleRecord, arch: ArchRecord, dataset: DatasetRecord) -> str:
    """What would work instead, for an error message: other archs for this rule and dataset, and other
    datasets for this rule and arch."""
    archs = [a.name for a in ARCHS.values() if not problems(rule, a, dataset)]
    datasets = [d.name for d in DATASETS.values() if not problems(rule, arch, d)]
    parts = []
    if archs:
        parts.append(f"archs that run {rule.name!r} on {dataset.name!r}: {', '.join(archs)}")
    if datasets:
        parts.append(f"datasets {rule.name!r} on {arch.name!r} can use: {', '.join(datasets)}")
    return "; ".join(parts) if parts else f"no arch runs {rule.name!r} on {dataset.name!r}"


def rules_for_arch(arch: ArchRecord) -> list[str]:
    """Rules that can run on ``arch`` with some dataset."""
    return [r.name for r in RULES.values() if any(not problems(r, arch, d) for d in DATASETS.values())]


def datasets_for_arch(arch: ArchRecord) -> list[str]:
    """Datasets ``arch`` can be built for with its default parameters."""
    return [d.name for d in DATASETS.values() if not arch_problems(arch, d)]


def archs_for_rule(rule: RuleRecord) -> list[str]:
    return [a.name for a in ARCHS.values() if any(not problems(rule, a, d) for d in DATASETS.values())]
