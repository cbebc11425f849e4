"""The rule contract. A rule owns one batch's parameter update; the trainer owns everything around it."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from bioscale.lazy import lazy
from bioscale.spec import OptimSpec, Strict

if TYPE_CHECKING:
    from torch import Tensor
    from torch.optim import Optimizer

    from bioscale.data.base import BatchShard

# Rule modules register themselves without importing torch (bioscale.catalog): torch and the torch
# machinery are imported when a rule is first built.
torch = lazy("torch")
nn = lazy("torch.nn")
models_base = lazy("bioscale.models.base")
optimisers = lazy("bioscale.optim")
accel = lazy("bioscale.accel")
tasks = lazy("bioscale.tasks")


class BPParams(Strict):
    """What every backward rule takes (backprop included)."""

    batch_manhattan: bool = False
    """Replace each gradient by its sign before weight decay and momentum (Xiao's ``--bm``)."""


@dataclass
class StepOutput:
    loss: Tensor
    """Detached scalar: the task loss on this batch (no host sync needed to produce it)."""
    logits: Tensor | None = None
    """Detached class scores for this batch, for the running train error."""


class Rule(ABC):
    compiles_model: ClassVar[bool] = False
    """True when ``train_step`` calls ``self.model`` whole (forward, loss, backward), so ``train.compile`` can
    replace it by a compiled module (``bioscale.accel``). A rule that calls the model's layers one at a time
    leaves it False and says why in ``eager_reason``."""
    eager_reason: ClassVar[str] = "the rule's step does not call the model as a whole"

    def __init__(self, params: BaseModel, optim: OptimSpec, inverse_optim: OptimSpec | None = None) -> None:
        self.params = params
        self.optim = optim
        self.inverse_optim = inverse_optim
        self.model: nn.Module | None = None
        self.optimizers: dict[str, Optimizer] = {}
        self.device = torch.device("cpu")
        self.amp = False
        self.criterion = nn.CrossEntropyLoss()
        self.task = tasks.get("classification")
        """How a batch becomes a loss (``bioscale.tasks``); the trainer sets the job's task."""
        self.shard: BatchShard | None = None
        """In a distributed job, which rows of the global batch this rank's ``train_step`` holds (set by the
        trainer before each step); None in a single process."""
        self.gradient_sync: Callable[[Optimizer], None] | None = None
        """In a distributed job, averages an optimiser's gradients over the ranks (``bioscale.distributed``)."""

    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Adapt ``model`` to the rule (swap layers, attach inverses); return the model to train."""

    def setup(self, device: torch.device, amp: bool | str = False) -> None:
        """Called once the model is on ``device``: build the optimisers. ``amp``: ``train.amp`` (``true``: bf16
        autocast on CUDA only; ``bf16``: on any device, ``bioscale.accel.autocast_enabled``)."""
        self.device = torch.device(device)
        self.amp = accel.autocast_enabled(amp, self.device)
        self.optimizers = self.build_optimizers()

    def build_optimizers(self) -> dict[str, Optimizer]:
        return {"model": optimisers.build_optimizer(self.param_groups(), self.optim)}

    def param_groups(self) -> list[dict[str, Any]]:
        """All trainable parameters; the output layer in its own group when ``last_layer_lr`` is set."""
        assert self.model is not None
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optim.last_layer_lr is None:
            return [{"params": params}]
        last = {id(p) for p in models_base.output_module(self.model).parameters()}
        return [
            {"params": [p for p in params if id(p) not in last]},
            {"params": [p for p in params if id(p) in last], "lr": self.optim.last_layer_lr},
        ]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @abstractmethod
    def train_step(self, x: Tensor, y: Tensor) -> StepOutput:
        """Update the parameters on one batch."""

    def sync_gradients(self, opt: Optimizer) -> None:
        """Make ``opt``'s gradients those of the whole global batch before anything reads them (a step, Batch
        Manhattan's sign). A no-op in a single process; in a distributed job the optimiser's step pre-hook
        calls it too, so a rule that steps without calling it is still exact unless it transforms gradients
        first. Call it between the backward pass and the first use of the gradients."""
        if self.gradient_sync is not None:
            self.gradient_sync(opt)

    def noise_like(self, t: Tensor) -> Tensor:
        """Standard normal noise shaped like the batch ``t``, from the global torch RNG. In a distributed job,
        this rank's rows of the noise a single process draws for the whole global batch: every rank draws the
        global batch's noise (keeping the RNG streams of all ranks equal) and keeps its rows, so per-example
        noise is exactly the single process's. Drawn in the logical (contiguous) order whatever ``t``'s memory
        layout, so a channels_last run (``train.channels_last``) draws the same noise per unit as a plain one
        (``randn_like`` would fill a channels_last tensor in memory order: other noise at each position)."""
        shard = self.shard
        if shard is None:
            return torch.randn(t.shape, dtype=t.dtype, device=t.device)
        full = torch.randn((shard.total, *t.shape[1:]), dtype=t.dtype, device=t.device)
        return full[shard.rows]

    def begin_epoch(self, epoch: int) -> None:
        """Set learning rates for ``epoch`` (0-based); target rules also pick the alternating phase here."""
        for name, opt in self.optimizers.items():
            optimisers.set_epoch_lr(opt, self.optim_spec(name), epoch)

    def warms_up(self) -> bool:
        """Whether an optimiser ramps its lr up over the first steps (``OptimSpec.warmup``): the trainer then
        calls ``begin_step`` before every step."""
        return any(self.optim_spec(name).warmup is not None for name in self.optimizers)

    def begin_step(self, epoch: int, step: int) -> None:
        """Set learning rates for the job's ``step``-th training step (0-based, over every epoch and phase)
        while a warm-up ramps them; after the ramp, the epoch's lr stays as ``begin_epoch`` set it."""
        for name, opt in self.optimizers.items():
            spec = self.optim_spec(name)
            if spec.warmup is not None and step <= spec.warmup.steps:
                optimisers.set_epoch_lr(opt, spec, epoch, step)

    def optim_spec(self, name: str) -> OptimSpec:
        """The spec of the optimiser called ``name``: ``inverse_optim`` (when given) for "inverse"."""
        return self.inverse_optim if name == "inverse" and self.inverse_optim else self.optim

    def phases(self, epoch: int) -> list[str]:
        """Passes over the training set in ``epoch``. Alternating target rules return ["inverse",
        "forward"]: one full pass training the inverses, then one training the forward weights."""
        return ["train"]

    def begin_phase(self, phase: str) -> None:
        """Called before each pass that ``phases`` names."""
        return None

    def diagnostics(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Per-layer measurements on one batch (alignment angles, ...), logged each epoch."""
        return {}

    def describe(self) -> str | None:
        """One line on what ``prepare`` did to the model (layers converted, inverses attached), recorded in
        the job's result so a reader can check the rule reached the layers it should."""
        return None

    def current_lr(self) -> float | None:
        opt = self.optimizers.get("model")
        return float(opt.param_groups[0]["lr"]) if opt else None

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
            optimisers.use_impl(o, self.optim_spec(k).impl)  # the spec's, not the checkpoint's


class BackwardRule(Rule):
    """Rules that only change what flows backward: forward, loss, backward, step."""

    compiles_model: ClassVar[bool] = True

    def prepare(self, model: nn.Module) -> nn.Module:
        self.model = self.convert(model)
        return self.model

    def convert(self, model: nn.Module) -> nn.Module:
        """Swap layers for the rule's feedback layers; backprop keeps the model as it is."""
        return model

    def rule_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """Forward, loss and the rule's backward pass (gradients accumulate; no step): (loss, logits; None for
        a task without class scores, e.g. detection). The job's task (``self.task``) turns the batch into the
        loss; the feedback layers change what its backward computes; DFA overrides it."""
        assert self.model is not None
        with self.autocast():
            loss, logits = self.task.loss(self.model, x, y, self.criterion)
        loss.backward()
        return loss, logits

    def train_step(self, x: Tensor, y: Tensor) -> StepOutput:
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss, logits = self.rule_backward(x, y)
        self.sync_gradients(opt)  # before Batch Manhattan: the sign of the global batch's gradient
        self.before_step()
        if getattr(self.params, "batch_manhattan", False):
            optimisers.batch_manhattan_(opt)
        opt.step()
        self.after_step()
        return StepOutput(loss.detach(), logits.detach() if logits is not None else None)

    def before_step(self) -> None:
        """Hook between backward and the optimiser step (e.g. Kolen-Pollack's feedback update)."""
        return None

    def after_step(self) -> None:
        """Hook after the optimiser step (e.g. redrawing random feedback magnitudes)."""
        return None
