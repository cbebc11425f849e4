"""The one schema: pydantic models shared by grid files, the CLI, the store and the report.

Every model forbids unknown keys, so a misspelt key in a grid is an error, never a silent default.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from bioscale.ids import added

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


CompileMode = Literal[False, "default", "reduce-overhead", "max-autotune"]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _compile_mode(value: Any) -> Any:
    """``true`` (the field was a bool) is ``default``; ``none``/``off`` is false."""
    word = value.strip().lower() if isinstance(value, str) else value
    if type(word) is int and word in (0, 1):  # a bool written as a number, as the old field took it
        word = bool(word)
    if word is True or word in ("true", "on", "yes"):
        return "default"
    if word is None or word in ("false", "off", "none", "no"):
        return False
    if word is not False and word not in COMPILE_MODES:
        raise ValueError("train.compile is false, default, reduce-overhead (also CUDA graphs) or max-autotune "
                         "(true means default)")
    return word


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
    """Per-epoch decay. ``step``: lr multiplied by ``gamma`` every ``step_size`` epochs (Xiao's code: 0.1
    every 10). ``multistep``: by ``gamma`` at each epoch of ``milestones`` (torchvision's detection reference
    for RetinaNet: 0.1 at epochs 16 and 22 of 26)."""

    name: Literal["step", "multistep"] = "step"
    step_size: PositiveInt = 30
    gamma: PositiveFloat = 0.1
    milestones: list[PositiveInt] | None = added(None)
    """``multistep`` only, increasing: after this many epochs lr is multiplied by ``gamma`` again (torch's
    ``MultiStepLR``): [16, 22] trains 16 epochs at lr, 6 at gamma x lr and the rest at gamma^2 x lr."""

    @model_validator(mode="after")
    def _milestones_for_multistep(self) -> LRSchedule:
        if self.name == "multistep":
            if not self.milestones:
                raise ValueError("a multistep schedule needs milestones, the epochs after which lr is "
                                 "multiplied by gamma, e.g. {name: multistep, milestones: [16, 22], gamma: 0.1}")
            if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
                raise ValueError(f"milestones must increase, not {self.milestones}")
        elif self.milestones is not None:
            raise ValueError("milestones belong to a multistep schedule; a step schedule decays every "
                             "step_size epochs (set name: multistep to use milestones)")
        return self


class Warmup(Strict):
    """Linear lr warm-up over the first ``steps`` optimiser steps of a job, from ``factor`` x lr to lr, as
    torchvision's detection reference (``warmup_factor`` 1/1000 over 1000 iterations) trains RetinaNet."""

    steps: PositiveInt = 1000
    factor: float = Field(0.001, gt=0.0, le=1.0)


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
    warmup: Warmup | None = added(None)
    """Linear warm-up of every group's lr over the job's first steps (``Warmup``); None: none."""
    impl: Literal["fused", "foreach", "loop", "torch"] = added("fused", baseline="torch")
    """How the step is computed (``bioscale.optim``): ``fused`` (one kernel over all parameters, the fastest on
    the CPU and the GPU), ``foreach`` (multi-tensor ops), ``loop`` (one parameter at a time) or ``torch``
    (torch's own pick: foreach on CUDA, loop on the CPU; what bioscale did before this field existed). The same
    update in every case, rounded differently (float32: within a few 1e-7 of loop's after 100 steps). A
    run-time setting like ``train.device``: not part of the job id (see ``RUNTIME_FIELDS``)."""


class DistributedSpec(Strict):
    """One job across several processes (GPUs) with torch.distributed, launched by torchrun
    (``bioscale.distributed``). ``train.batch_size`` stays the global batch: each of the
    nproc_per_node * nnodes ranks trains on its share of it, and the job computes what one process computes
    on the whole batch (exactly, for nets without batch norm or with ``sync_bn``)."""

    nproc_per_node: PositiveInt = 1
    """Processes per node: one per GPU (on the CPU, gloo processes that share the cores)."""
    nnodes: PositiveInt = 1
    """Nodes. More than one runs under the slurm executor only: one task per node of the allocation, each
    starting torchrun for its node at a shared c10d rendezvous (``bioscale.slurm_task.node_of``)."""
    sync_bn: bool = False
    """Batch norm over the global batch (``GlobalBatchNorm``). Default: each rank normalises its own part of
    the batch, as Xiao et al.'s DataParallel code does per GPU."""


class TrainSpec(Strict):
    epochs: PositiveInt = 500
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 1000
    train_error: Literal["eval", "running"] = "eval"
    """``eval``: a clean pass over the training set each epoch; ``running``: errors seen while training."""
    device: Device = "auto"
    amp: bool | Literal["bf16"] = False
    """Mixed precision: bfloat16 autocast of the forward pass (losses, softmax and the optimiser stay float32;
    ``bioscale.accel``). ``true``: on CUDA only, float32 on any other device (a grid that sets it also runs
    unchanged on a laptop); ``bf16``: on whatever device the job runs, the CPU included (for checking the numbers
    off the GPU; its speed there depends on the CPU's bf16 support). Part of the job id: bfloat16 changes the
    numbers (``true`` and ``bf16`` are different ids, even on CUDA where they compute the same)."""
    channels_last: bool = False
    """The model's 4-d weights and the 4-d input batches in channels_last (NHWC) memory format, the layout
    tensor cores and cuDNN's fastest conv kernels use (conv nets and torchvision nets on a GPU; nothing for
    FC nets). Same numbers within float rounding: run-time, not part of the job id (``RUNTIME_FIELDS``)."""
    compile: Annotated[CompileMode, BeforeValidator(_compile_mode)] = False
    """``torch.compile`` of the model's forward (and so its backward): ``false``, ``default``,
    ``reduce-overhead`` (also CUDA graphs: the fixed per-step cost of many small kernels goes away) or
    ``max-autotune`` (slow to compile, searches kernels); ``true`` means ``default``. Needs a C/C++ compiler
    (preflight checks). Rules whose step does not call the model whole (dfa and the target rules call its
    layers one at a time) run eager, with a note in the result's ``rule_setup`` (``bioscale.accel``). Same
    numbers within float rounding: run-time, not part of the job id (an id hashes ``false``, so a job run with
    ``compile: true`` before this was a run-time field has the id of the same job without it)."""
    checkpoint: bool = True
    eval_every: PositiveInt = added(1)
    """Epochs between evaluations (test error, and the train error when ``train_error`` is ``eval``); the last
    epoch is always evaluated. The job's best errors are over the evaluated epochs, so this is part of the
    job id (a value other than 1 gives a new one); epochs in between record no errors."""
    checkpoint_every: PositiveInt = added(1)
    """Epochs between checkpoints (the last epoch always writes one). A resume replays the epochs after the
    last checkpoint exactly (their metrics are rewritten). Run-time: not part of the job id."""
    diagnostics_every: int = Field(5, ge=0)
    """Epochs between diagnostics (alignment angles, ...): the first epoch, every N-th and the last; 0 turns
    them off. 5 with ``diagnostics_batch`` 256 costs under 3% of a job on mnist-5k (one run of them: 5-9% of
    an epoch of the FC/LC nets, 23-35% with the old 1,000 examples) and gives a 500-epoch curve 101 points.
    Run-time: diagnostics touch no training state, so the job id hashes the value every job had when ids were
    frozen (1, ``ID_PINNED``) whatever is set."""
    diagnostics_batch: PositiveInt | None = added(256, baseline=None)
    """Examples of the first training batch the diagnostics use (fixed across epochs, so the curves compare
    like with like); None: the whole first evaluation batch (``eval_batch_size``, what was used before)."""
    num_workers: NonNegativeInt | Literal["auto"] = "auto"
    """DataLoader worker processes per rank for file-backed datasets (ImageNet folders, COCO). ``auto``: this
    process's share of the CPUs it may use, less one, at most 16 (``bioscale.data.loaders.auto_workers``).
    Where a job runs, not what it computes (augmentation is seeded per image): not part of the job id."""
    distributed: DistributedSpec = added(default_factory=DistributedSpec)
    """Processes the job runs on (``--nproc-per-node``). Part of the job id when it is not one process: per-rank
    batch norm makes the result depend on it."""


# Fields that say where or how fast a job runs, not what it computes: they stay out of the job id, so
# the same grid run on a laptop and on a cluster shares its results. A field that changes what a job
# computes belongs in the id instead: add it with `bioscale.ids.added(...)` so existing ids stay valid.
RUNTIME_FIELDS: dict[str, set[str]] = {
    "train": {"device", "eval_batch_size", "num_workers", "checkpoint", "checkpoint_every", "diagnostics_every",
              "diagnostics_batch", "channels_last", "compile"},
    # the optimiser's implementation rounds differently but computes the same update, as a device or a
    # thread count does (both run-time): results keep their ids across the switch to fused optimisers
    "optim": {"impl"}, "inverse_optim": {"impl"},
}
# Run-time fields that were hashed when ids were frozen (``id_fields_v1.json``): the id hashes the value
# every job had then, so moving them out of the id moves no id.
ID_PINNED: dict[str, dict[str, Any]] = {"train": {"diagnostics_every": 1, "compile": False}}


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


_MEM = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])(?:I?B)?")
_MEM_PER_GB = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
SBATCH_MANAGED = {
    "array": "bioscale submits one array per resource set", "output": "logs go under each job's directory",
    "error": "logs go under each job's directory", "signal": "submitit's preemption signal (USR2) is needed",
    "open-mode": "requeued tasks append to their log", "job-name": "it names the grid",
    "partition": "use resources.partition (--partition)", "time": "use resources.time (--time)",
    "mem": "use resources.mem (--mem)", "gpus-per-node": "use resources.gpus_per_job (--gpus-per-job)",
    "cpus-per-task": "use resources.cpus_per_task (--cpus-per-task)", "account": "use resources.account (--account)",
    "qos": "use resources.qos (--qos)", "nodes": "one job runs on one node", "ntasks-per-node": "one task per job",
}
"""sbatch options that bioscale sets itself, and why each may not be given as an extra option."""


def _check_mem(value: Any) -> Any:
    """GB: a number (GB) or a string with a unit, 64G, 500M, 1.5T (a bare "64" is refused: sbatch reads it as MB)."""
    if isinstance(value, str):
        found = _MEM.fullmatch(value.strip().upper())
        if not found:
            raise ValueError("memory is a number of GB or a size with a unit such as 64G, 500M or 1T")
        return float(found.group(1)) * _MEM_PER_GB[found.group(2)]
    return value


def _check_time(value: Any) -> Any:
    """A Slurm time string, normalised to D-HH:MM:SS. Numbers are refused: YAML reads an unquoted 24:00:00 as
    the number 86400, which would silently become 60 days."""
    if isinstance(value, (bool, int, float)):
        raise ValueError("a time limit is a quoted Slurm time string such as '24:00:00', '2-00:00:00' or '90' "
                         "(minutes); quote it in YAML, which reads an unquoted 24:00:00 as the number 86400")
    if not isinstance(value, str):
        return value
    minutes = slurm_minutes(value)
    if minutes is None or minutes < 1:
        raise ValueError("a time limit is a Slurm time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, at "
                         "least one minute, e.g. '24:00:00' or '2-00:00:00'")
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"


def slurm_minutes(text: str) -> int | None:
    """Minutes (rounded up) of a Slurm time string, or None if it is not one."""
    found = _TIME.fullmatch(text.strip())
    if not found:
        return None
    days, a, b, c = (int(g) if g is not None else None for g in found.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    return -(-seconds // 60)


def _check_sbatch(value: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        name = key.strip().lstrip("-").replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise ValueError(f"{key!r} is not an sbatch long option name (like constraint or mail-type)")
        if name in SBATCH_MANAGED:
            raise ValueError(f"--{name} is set by bioscale ({SBATCH_MANAGED[name]})")
        if item is False or item is None or isinstance(item, (dict, list)):
            raise ValueError(f"--{name}: give a value (text or a number), or true for a flag such as exclusive")
        out[name] = item
    return out


class Resources(Strict):
    """What one scheduler task asks for: ``resources:`` in a grid, per job through an override's
    ``set: {resources.gpus_per_job: 2}``, or ``bioscale run`` flags. Where a job runs, not what it computes:
    never part of a job id. Unset values are left to the cluster's defaults."""

    partition: str | None = None
    gpus_per_job: int | None = Field(None, ge=0)
    cpus_per_task: PositiveInt | None = None
    """Also the job's torch threads, so a requeued job computes with the same thread count."""
    mem: Annotated[PositiveFloat | None, BeforeValidator(_check_mem)] = None
    """GB (``64``, ``"64G"``, ``"500M"``)."""
    time: Annotated[str | None, BeforeValidator(_check_time)] = None
    """Time limit per run of a task, as Slurm writes it (``"24:00:00"``); a job that reaches it saves its epochs,
    requeues itself and resumes."""
    account: str | None = None
    qos: str | None = None
    sbatch: Annotated[dict[str, str | int | float | bool], AfterValidator(_check_sbatch)] = Field(default_factory=dict)
    """Extra ``#SBATCH --key=value`` lines (``true``: a flag such as ``--exclusive``)."""
    setup: list[str] = Field(default_factory=list)
    """Shell lines run before the task on the node, e.g. ``module load cuda``."""

    @property
    def minutes(self) -> int | None:
        return slurm_minutes(self.time) if self.time is not None else None


class Scheduler(Strict):
    """The scheduler job that ran a job (``result.json``'s ``provenance.scheduler``)."""

    name: str
    """slurm, local or debug (submitit's clusters)."""
    job_id: str
    """As ``squeue``/``sacct`` show it: ``1234_5`` for task 5 of array 1234."""
    array_job_id: str | None = None
    array_task_id: str | None = None
    restarts: int = 0
    """How often Slurm requeued it (preemption, time limit): ``SLURM_RESTART_COUNT``."""


def _check_sinks(names: list[str]) -> list[str]:
    from bioscale.logsinks import check_names  # torch-free

    return check_names(names)


DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
"""What a searched key can be drawn from (``bioscale.search``)."""


class Distribution(Strict):
    """One searched key: exactly one of ``loguniform: [lo, hi]`` (log-uniform, lo > 0), ``uniform: [lo, hi]``,
    ``int: [lo, hi]`` (an integer, both ends included) or ``choice: [a, b, ...]`` (one of them, equally likely).
    Bartunov et al.'s Table 4 ranges are ``loguniform`` (learning rates), ``uniform`` (alpha, sigma) and
    ``choice`` (beta2, epsilon)."""

    model_config = ConfigDict(populate_by_name=True)

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one(cls, value: Any) -> Any:
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(f"a searched key takes one distribution, e.g. {{loguniform: [1.0e-5, 3.0e-4]}}; one of "
                             f"{', '.join(DISTRIBUTIONS)}")
        (name,) = value
        if name not in DISTRIBUTIONS and name != "int_":
            raise ValueError(f"unknown distribution {name!r}: use one of {', '.join(DISTRIBUTIONS)}")
        return value

    @model_validator(mode="after")
    def _range(self) -> Distribution:
        kind, values = self.kind, self.values
        if kind == "choice":
            if not values:
                raise ValueError("choice: the list is empty; give at least one value")
            return self
        lo, hi = values
        if kind == "int" and hi < lo:
            raise ValueError(f"int: [{lo}, {hi}] is inverted; write it [low, high]")
        if kind != "int" and not lo < hi:
            what = "inverted" if hi < lo else "empty (one value)"
            raise ValueError(f"{kind}: [{lo:g}, {hi:g}] is {what}; write it [low, high] with low < high, or fix the "
                             "key's value in `base` instead of searching it")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform: [{lo:g}, {hi:g}] must lie above 0 (it is uniform in the logarithm); use "
                             "uniform for a range that includes 0 or negative values")
        return self

    @property
    def kind(self) -> str:
        return next(n for n in DISTRIBUTIONS if getattr(self, "int_" if n == "int" else n) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, "int_" if self.kind == "int" else self.kind)


class SearchBlock(Strict):
    """Keys searched only for the jobs that match ``where`` (e.g. alpha for DTP only)."""

    where: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Distribution]


class SearchSpec(Strict):
    """Random search (Bartunov et al.: "random searches over 60 random configurations drawn from the ranges
    specified in table 4"): every combination of the axes is run with ``n`` configurations drawn from
    ``space`` (and from each ``conditional`` block whose ``where`` matches). The draws are a function of
    (seed, key, configuration index) only (``bioscale.search``): the same on any machine, whatever the order
    of the keys. Grid-level: a drawn value is an ordinary job parameter, so it is part of the job id and
    the search itself is not."""

    n: PositiveInt
    """Configurations per combination of the axes."""
    seed: Seed = 0
    space: dict[str, Distribution] = Field(default_factory=dict)
    conditional: list[SearchBlock] = Field(default_factory=list)


def _check_keep(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("keep is a number of jobs (1) or a fraction (1/3, 0.5)")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"keep: {value} keeps no job; keep at least 1")
        return value
    try:
        frac = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"keep: {value!r} is neither a number of jobs (1) nor a fraction (1/3, 0.5)") from None
    if frac.denominator == 1 and frac >= 1:
        return int(frac)
    if not 0 < frac < 1:
        raise ValueError(f"keep: {value!r} is a fraction outside (0, 1); give e.g. 1/3 or a number of jobs")
    return str(frac)


class PromoteSpec(Strict):
    """Successive halving over a search's configurations: every job of a group (the configurations of one
    combination of the axes) runs to the first rung's epoch; then only the best ``keep`` of them by
    ``metric`` (lower is better, ties by job id) continue to the next rung, and so on; the survivors of the
    last rung run their whole ``train.epochs``. Bartunov et al.'s ImageNet rule ("after 10 epochs we allowed
    only the best performing job to continue") is ``{rungs: [10, 100], keep: 1}`` with 100 epochs. Decisions are
    recorded in ``promotions.json`` in the grid's results folder and read back, never recomputed."""

    metric: Literal["val_error", "val_loss"] = "val_error"
    """Validation metrics only: a selection must never look at the test set."""
    rungs: list[PositiveInt] = Field(min_length=1)
    """Epochs at which a decision is taken, increasing; a rung equal to train.epochs is the end (no decision)."""
    keep: Annotated[int | str, BeforeValidator(_check_keep)] = "1/3"
    """A number of jobs (at least 1) or a fraction of those at the rung (rounded down, at least 1)."""

    @model_validator(mode="after")
    def _increasing(self) -> PromoteSpec:
        if any(b <= a for a, b in zip(self.rungs, self.rungs[1:], strict=False)):
            raise ValueError(f"rungs {self.rungs} must increase strictly, e.g. [10, 50, 500]")
        return self

    def survivors(self, candidates: int) -> int:
        """How many of ``candidates`` continue: ``keep`` jobs, or floor(keep * candidates), at least one
        (Jamieson & Talwalkar's successive halving keeps the top 1/eta)."""
        if isinstance(self.keep, int):
            return min(self.keep, candidates)
        return max(1, int(Fraction(self.keep) * candidates))


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
    resources: Resources | None = None
    """What each scheduler task asks for (``executor: slurm``); per job through ``overrides``."""
    logging: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
                       AfterValidator(_check_sinks)] = Field(default_factory=list)
    """Where every job's epochs are mirrored besides the store (``bioscale.logsinks``): ``tensorboard``,
    ``wandb`` (a single name is a list of one). Not part of any job id: it does not change what a job
    computes."""


    search: SearchSpec | None = None
    """Random search: ``n`` drawn configurations per combination of the axes (``bioscale.search``)."""
    promote: PromoteSpec | None = None
    """Successive halving over the search's configurations (``bioscale.promote``); needs ``search``."""

    @model_validator(mode="after")
    def _promote_needs_search(self) -> GridSpec:
        if self.promote is not None and self.search is None:
            raise ValueError("promote: successive halving chooses among a search's configurations; add a `search:` "
                             "block (n, seed, space) or remove `promote:`")
        return self


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
    scheduler: Scheduler | None = None
    """The Slurm (or submitit local/debug) job this run was part of, if any."""
    threads: int | None = None
    """torch's CPU threads for this job (``bioscale.threads``); None in results from before it was recorded."""
    stack: list[str] | None = None
    """The job ids trained as one stacked model with this one (``bioscale.stack``), in member order; None
    when it trained alone. Its epoch and wall times are then the stack's."""


class _TaskMetrics(Strict):
    """An output record with the task's own numbers (``bioscale.tasks``): detection's ``ap``, ``ap50``, ...

    ``metrics`` is left out of the JSON when empty, so a classification job's files are what they were."""

    metrics: dict[str, float] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _drop_empty_metrics(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("metrics"):
            data.pop("metrics", None)
        return data


class EpochMetrics(_TaskMetrics):
    """One line of ``metrics.jsonl``. ``train_error``/``test_error`` are None for a task without them
    (detection) and in an epoch that was not evaluated (``train.eval_every``)."""

    model_config = ConfigDict(allow_inf_nan=True)  # a diverged epoch records its nan/inf loss

    epoch: int
    train_loss: float
    train_error: float | None = None
    test_error: float | None = None
    """None for a task without them (detection) and in an epoch without evaluation (``train.eval_every``);
    the train error then too, unless it is the running one."""
    test_loss: float | None = None
    top5_error: float | None = None
    epoch_time_s: float
    lr: float | None = None
    diagnostics: dict[str, float] = Field(default_factory=dict)
    val_error: float | None = None
    """Error (%) on the dataset's validation hold-out (``dataset.params.validation``); None without one."""
    val_loss: float | None = None


class JobResult(_TaskMetrics):
    """``result.json``: the outcome of one job. Errors are in %, as the papers report them; ``metrics`` are
    the best epoch's task numbers (detection: AP in %)."""

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
    val_error: float | None = None
    """Best validation error (%) over the epochs, when the dataset has a validation hold-out."""
    val_epoch: int | None = None
    """The epoch of ``val_error``."""
    epoch_time_s: float | None = None
    wall_time_s: float | None = None
    error: str | None = None
    rule_setup: str | None = None
    """What the rule did to the model (e.g. "converted 20 Conv2d; kept on backprop: fc")."""
    provenance: Provenance | None = None
