"""The one schema: pydantic models shared by grid files, the CLI, the store and the report.

Every model forbids unknown keys, so a misspelt key in a grid is an error, never a silent default.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

Status = Literal["done", "failed", "diverged", "running", "pending"]

SEED_MAX = 2**32 - 1
"""Largest job seed. torch.manual_seed takes 0 .. 2**64-1 (a negative seed wraps around to a large one, so
it would silently alias another seed), and the loaders derive each epoch's seed as seed * 1_000_003 + epoch,
which must stay inside torch's range: 2**32 - 1 keeps it there with room for any number of epochs (and is
numpy's seed range too)."""

DEVICE_PATTERN = re.compile(r"auto|(cpu|cuda|mps|xpu)(:\d+)?")
DEVICES_ALLOWED = "auto, cpu, cuda, cuda:N, mps or xpu"


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"a seed is an integer from 0 to {SEED_MAX} (2**32 - 1): torch refuses larger seeds "
                         "once bioscale derives per-epoch seeds from them, and a negative seed would alias "
                         "a large one")
    return seed


def _check_device(device: str) -> str:
    if not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"train.device is one of {DEVICES_ALLOWED} (N: the GPU's index)")
    return device


Seed = Annotated[int, AfterValidator(_check_seed)]
Device = Annotated[str, AfterValidator(_check_device)]


class Strict(BaseModel):
    """Base of every input model. ``allow_inf_nan=False``: a nan or inf lr, eps, momentum or rule parameter
    (``.nan`` in YAML, ``--set optim.lr=inf``) is a validation error naming the key, not a silently broken
    run; output records that may hold a diverged loss (``EpochMetrics``, ``JobResult``) allow them again."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Component(Strict):
    """A named, registered thing (rule, arch, dataset) and its parameters.

    A bare string is shorthand for ``{name: <string>}``.
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class DatasetSpec(Component):
    pass


class ArchSpec(Component):
    pass


class RuleSpec(Component):
    pass


class LRSchedule(Strict):
    """Step decay: lr is multiplied by ``gamma`` every ``step_size`` epochs (Xiao's code: 0.1 every 10)."""

    name: Literal["step"] = "step"
    step_size: PositiveInt = 30
    gamma: PositiveFloat = 0.1


class OptimSpec(Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    momentum: float = Field(0.0, ge=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    nesterov: bool = False
    last_layer_lr: PositiveFloat | None = None
    """Separate lr for the output layer (Xiao's ``--llr``); None means the same as ``lr``."""
    schedule: LRSchedule | None = None


class TrainSpec(Strict):
    epochs: PositiveInt = 500
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 1000
    train_error: Literal["eval", "running"] = "eval"
    """``eval``: a clean pass over the training set each epoch; ``running``: errors seen while training."""
    device: Device = "auto"
    amp: bool = False
    """bfloat16 autocast on CUDA; ignored on the CPU."""
    compile: bool = False
    checkpoint: bool = True
    diagnostics_every: int = Field(1, ge=0)
    """Epochs between diagnostics (alignment angles, ...); 0 turns them off."""
    num_workers: int = Field(4, ge=0)


# Fields that say where or how fast a job runs, not what it computes: they stay out of the job id, so
# the same grid run on a laptop and on a cluster shares its results. A field that changes what a job
# computes belongs in the id instead: add it with `bioscale.ids.added(...)` so existing ids stay valid.
RUNTIME_FIELDS: dict[str, set[str]] = {"train": {"device", "eval_batch_size", "num_workers", "checkpoint"}}


class JobSpec(Strict):
    dataset: DatasetSpec
    arch: ArchSpec
    rule: RuleSpec
    optim: OptimSpec = Field(default_factory=OptimSpec)
    inverse_optim: OptimSpec | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    seed: Seed = 0

    def job_id(self) -> str:
        """A short hash of the resolved job: stable across runs, machines, key order and upgrades that add a
        parameter with ``bioscale.ids.added`` (see ``bioscale.ids``)."""
        from bioscale.ids import job_id  # ids reads the catalog, whose modules import this one

        return job_id(self)


class Override(Strict):
    where: dict[str, Any] = Field(default_factory=dict)
    set: dict[str, Any]


class ExecutorSpec(Component):
    """Where jobs run: ``inline``, ``local`` (a process pool) or ``slurm``."""


class GridSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """A folder name under the results directory: letters, digits, ``_.-``, at most 100 characters."""
    description: str = ""
    base: dict[str, Any]
    axes: dict[str, list[Any]] | list[dict[str, list[Any]]] = Field(default_factory=dict)
    """A mapping: the cartesian product of its value lists. A list of mappings: the union of their
    products, in order (for families whose parameters differ, e.g. target rules and their schedules)."""
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    executor: ExecutorSpec | None = None


class Provenance(Strict):
    bioscale_version: str
    torch_version: str | None = None
    python_version: str
    device: str | None = None
    hostname: str
    pid: int | None = None
    visible_devices: str | None = None
    """``CUDA_VISIBLE_DEVICES`` of the process that trained the job (a packed local worker's GPU)."""
    git_commit: str | None = None
    started_at: str
    finished_at: str | None = None


class EpochMetrics(Strict):
    """One line of ``metrics.jsonl``."""

    model_config = ConfigDict(allow_inf_nan=True)  # a diverged epoch records its nan/inf loss

    epoch: int
    train_loss: float
    train_error: float
    test_error: float
    test_loss: float | None = None
    top5_error: float | None = None
    epoch_time_s: float
    lr: float | None = None
    diagnostics: dict[str, float] = Field(default_factory=dict)


class JobResult(Strict):
    """``result.json``: the outcome of one job. Errors are in %, as the papers report them."""

    model_config = ConfigDict(allow_inf_nan=True)  # an outcome is recorded as it was, nan included

    job_id: str
    grid: str
    status: Status
    epochs: int = 0
    train_error: float | None = None
    test_error: float | None = None
    top5_error: float | None = None
    final_test_error: float | None = None
    best_epoch: int | None = None
    epoch_time_s: float | None = None
    wall_time_s: float | None = None
    error: str | None = None
    rule_setup: str | None = None
    """What the rule did to the model (e.g. "converted 20 Conv2d; kept on backprop: fc")."""
    provenance: Provenance | None = None
