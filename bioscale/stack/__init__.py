"""Stacked runs: M jobs that differ only in seed and numeric hyperparameters train as one stacked model.

Design (issue 13, item 1). A stack is built FROM its M solo jobs: each member is built exactly as its job's
trainer builds it (``build_member``: seed, ``build_rule``, ``rule.prepare(build_model(...))``, ``setup``), so
initial weights, feedback matrices, inverses and random features are the solo ones, drawn from the solo
seed; then their tensors are stacked on a new leading member dimension (``bioscale.stack.layers``): batched
matmuls for FC layers, one grouped convolution for conv layers, per-(member, position) matmuls for LC
layers, and the same for target propagation's inverses. Activations are [M, B, ...]: member m trains on its
own batch (its own data order). The rule's step is mirrored per family in ``bioscale.stack.rules`` with every
loss the sum of the members' batch-mean losses (so each member's gradient is its solo gradient), per-member
sigma/alpha/KP decay as [M] vectors, each member's random draws (brSF's redraws, TP's noise) from its own
saved generator state (``bioscale.stack.rng``), and one optimiser step with per-member lr, betas, eps,
weight decay, momentum and lr schedule (``bioscale.stack.optim``: torch's optimisers take one scalar per
group; Adam runs torch's fused kernel member by member, or one flat formula step per group on a GPU). In
float64 each member follows its solo run to within 1e-10 over several steps (most rules ~1e-15;
sign-symmetry under Adam ~1e-10, Adam's normalisation magnifying rounding in near-zero gradients: 2e-16
under SGD), checked against the solo rule code in tests/stack.

Member m's solo state (model ``state_dict``, the rule's optimiser state in torch's format, its generator
states) comes out with ``Stack.member_state(m)`` and goes back with ``Stack.load_member_state``: a member's
checkpoint is the one its solo job would write, and a solo checkpoint resumes inside a stack.

What the trainer calls::

    reason = stackable(specs)            # None, or why these jobs cannot share a stack
    stack = Stack.build(specs, info, device)
    for epoch ...:
        stack.begin_epoch(epoch)
        for phase in stack.phases(epoch):
            stack.begin_phase(phase)
            for x, y in batches:          # x [M, B, ...], y [M, B]: member m's batch in row m
                out = stack.step(x, y)    # out.loss [M], out.logits [M, B, classes]
        logits = stack.forward(x_test)    # [M, B, classes]; x_test [B, ...] is shared by all members
        scores = bioscale.stack.evaluate.evaluate(stack, loader)  # one Evaluation per member, one pass
        model_m, rule_m = stack.member(m) # the solo objects, synced: diagnostics (rule_m.diagnostics) as today
        state = stack.member_state(m)     # checkpoint (Trainer.save's keys, minus epochs/wall time)
        stack.load_member_state(m, state) # resume member m from its own checkpoint
        stack.current_lr(m)
        stack = stack.subset([0, 2, 3])   # drop member 1 (diverged, or its job stops here); the rest carry on

A member that diverges (nan/inf) stays in its own slice: the others keep computing exactly their solo runs
(tested), so the trainer can record it as diverged and keep stepping (or rebuild the stack without it).

Not (yet) stacked: bf16 autocast, torch.compile, distributed jobs, rules other than the ten built-in ones
(a plugin subclass of one of them included, since it may change the step), architectures other than fc, lc
and conv. ``stackable`` says which and why; ``Stack`` refuses them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bioscale.catalog import ARCHS, RULES
from bioscale.lazy import grad_mode, lazy

if TYPE_CHECKING:
    from torch import Tensor, nn

    from bioscale.data.base import DataShape
    from bioscale.rules.base import Rule
    from bioscale.spec import JobSpec
    from bioscale.stack.rules import StackedStep

torch = lazy("torch")

STACK_ARCHS = ("fc", "lc", "conv")
STACK_RULES = ("bp", "fa", "ss", "frsf", "brsf", "kp", "dfa", "dtp", "sdtp", "aosdtp")
"""Rules with a stacked step."""
STACKED_CLASSES = frozenset({
    "bioscale.rules.bp.BP", "bioscale.rules.feedback.FA", "bioscale.rules.feedback.SignSymmetry",
    "bioscale.rules.feedback.FRSF", "bioscale.rules.feedback.BRSF", "bioscale.rules.feedback.KolenPollack",
    "bioscale.rules.feedback.DFA", "bioscale.rules.target.DTP", "bioscale.rules.target.SDTP",
    "bioscale.rules.target.AOSDTP",
})
"""Their exact classes (a subclass, e.g. a plugin built on DFA, may change the step: refused), by name so that
``stackable`` runs without torch (planning processes); ``bioscale.stack.rules.STACKED_RULES`` maps them to the
stacked steps (a test keeps the two equal)."""

PER_MEMBER: dict[str, set[str]] = {
    "seed": set(),
    "optim": {"lr", "betas", "eps", "weight_decay", "momentum", "last_layer_lr", "schedule", "impl"},
    "inverse_optim": {"lr", "betas", "eps", "weight_decay", "momentum", "last_layer_lr", "schedule", "impl"},
    "rule.params": {"sigma", "alpha", "decay"},
}
"""What may differ between the members of one stack: the rest of the job specs must be equal."""


def stackable(specs: JobSpec | list[JobSpec]) -> str | None:
    """None when these jobs (or this one job) can train as one stack; else the reason, in words."""
    specs = [specs] if not isinstance(specs, list) else specs
    if not specs:
        return "no jobs to stack"
    first = specs[0]
    if first.arch.name not in STACK_ARCHS:
        return (f"arch {first.arch.name!r} cannot be stacked: stacks take the layered nets "
                f"{', '.join(STACK_ARCHS)}")
    impl = RULES.get(first.rule.name).impl
    if f"{impl.__module__}.{impl.__qualname__}" not in STACKED_CLASSES:
        return f"rule {first.rule.name!r} has no stacked step (stackable rules: {', '.join(STACK_RULES)})"
    if not ARCHS.get(first.arch.name).layered:
        return f"arch {first.arch.name!r} is not a layered net"
    train = first.train
    if train.amp:
        return "train.amp (bf16 autocast) is not implemented for stacks"
    if train.compile:
        return "train.compile is not implemented for stacks"
    if train.distributed.nproc_per_node * train.distributed.nnodes > 1:
        return "a distributed job (several processes) cannot be stacked"
    ref = shared_settings(first)
    for i, spec in enumerate(specs[1:], 1):
        diff = _first_difference(ref, shared_settings(spec))
        if diff is not None:
            return f"job {i} differs from job 0 in {diff}, which members of one stack must share"
        if (spec.inverse_optim is None) != (first.inverse_optim is None):
            return f"job {i} and job 0 differ in whether inverse_optim is given"
        for key in ("optim", "inverse_optim"):
            a, b = getattr(first, key), getattr(spec, key)
            if a is not None and b is not None and (a.last_layer_lr is None) != (b.last_layer_lr is None):
                return (f"job {i} and job 0 differ in whether {key}.last_layer_lr is set (it splits the "
                        "optimiser's parameter groups)")
    return None


def shared_settings(spec: JobSpec) -> dict[str, Any]:
    """The spec without what may differ per member (``PER_MEMBER``), rule params validated (defaults filled)."""
    d = spec.model_dump(mode="json")
    d.pop("seed")
    for key in ("optim", "inverse_optim"):
        if d.get(key) is not None:
            d[key] = {k: v for k, v in d[key].items() if k not in PER_MEMBER[key]}
    params = RULES.get(spec.rule.name).params.model_validate(spec.rule.params).model_dump(mode="json")
    d["rule"]["params"] = {k: v for k, v in params.items() if k not in PER_MEMBER["rule.params"]}
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("device", "num_workers", "eval_batch_size",
                                                                    "checkpoint", "checkpoint_every",
                                                                    "diagnostics_every", "diagnostics_batch")}
    return d


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if d is not None:
                return d
        return None
    return None if a == b else f"{path} ({a!r} vs {b!r})"


@dataclass
class Member:
    """One job built exactly as its solo trainer builds it, and its generators' state after that."""

    spec: JobSpec
    model: nn.Module
    rule: Rule
    rng: Any


def build_member(spec: JobSpec, info: DataShape, device: Any = "cpu") -> Member:
    """``Trainer.build``'s model and rule for ``spec`` (seeded by ``spec.seed``; data loading excluded)."""
    from bioscale.models import build_model
    from bioscale.rules import build_rule
    from bioscale.stack.rng import RNGState

    device = torch.device(device)
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    rule = build_rule(spec)
    model = rule.prepare(build_model(spec.arch, info))
    model.to(device)
    rule.setup(device, spec.train.amp)
    return Member(spec, model, rule, RNGState.capture(device))


class Stack:
    """M members as one stacked model and one stacked rule (see the module docstring)."""

    def __init__(self, members: list[Member]) -> None:
        from bioscale.errors import BioscaleError
        from bioscale.stack.layers import stack_models
        from bioscale.stack.rng import MemberRNG
        from bioscale.stack.rules import stacked_rule

        reason = stackable([m.spec for m in members])
        if reason is not None:
            raise BioscaleError(f"these jobs cannot train as one stack: {reason}. Run them unstacked (--stack 1).")
        self.members = members
        self.net = stack_models([m.model for m in members])
        for i, mem in enumerate(members):  # the solo models now hold views of the stack: no second copy
            self.net.bind_member(i, mem.model)
            _release_optimizer_state(mem)
        self.rng = MemberRNG([m.rng for m in members])
        self.rule = stacked_rule([m.rule for m in members], self.net, self.rng)

    @classmethod
    def build(cls, specs: list[JobSpec], info: DataShape, device: Any = "cpu") -> Stack:
        return cls([build_member(s, info, device) for s in specs])

    @property
    def size(self) -> int:
        return len(self.members)

    # -- training -------------------------------------------------------------------------------------
    def phases(self, epoch: int) -> list[str]:
        return self.rule.phases(epoch)

    def begin_epoch(self, epoch: int) -> None:
        self.net.train()
        self.rule.begin_epoch(epoch)

    def begin_phase(self, phase: str) -> None:
        self.rule.begin_phase(phase)

    def step(self, x: Tensor, y: Tensor) -> StackedStep:
        """One training step; x [M, B, ...] and y [M, B] hold member m's batch in row m."""
        return self.rule.train_step(x, y)

    @grad_mode(False)
    def forward(self, x: Tensor) -> Tensor:
        """Logits [M, B, classes] for x [M, B, ...] or one batch x [B, ...] shared by every member."""
        return self.net(x)

    def current_lr(self, m: int) -> float:
        """Member m's lr now (``Rule.current_lr``: the first group of its "model" optimiser)."""
        return float(self.rule.optimizers["model"].groups[0].lr[m])

    # -- members out and in -------------------------------------------------------------------------------
    def member_state(self, m: int) -> dict[str, Any]:
        """Member m's resumable state as ``Trainer.save`` writes it (model, rule, generators): copies, owned by
        the caller (the solo model's tensors are views of the stack, and ``torch.save`` of a view writes its
        whole storage: every member's weights)."""
        model, rule = self.member(m)
        rng = self.rng.states[m]
        state = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "rule": rule.state_dict(),
                 "torch_rng": rng.cpu.clone(), "cuda_rng": [rng.cuda.clone()] if rng.cuda is not None else [],
                 "python_rng": rng.python}
        _release_optimizer_state(self.members[m])  # the dict holds it now
        return state

    def member(self, m: int) -> tuple[nn.Module, Rule]:
        """Member m's solo model and rule, holding the stack's current state. The model's tensors are the
        stack's own (views, ``StackedNet.bind_member``: read them, do not write; ``load_member_state`` writes);
        its optimisers' state is a copy, loaded here and dropped from every other member, so at most one
        member's solo optimiser state exists at a time. Scratch objects, refilled by every call (of this stack
        or of a ``subset`` of it, which shares them)."""
        mem = self.members[m]
        self.net.bind_member(m, mem.model)
        for other in self.members:
            if other is not mem:
                _release_optimizer_state(other)
        state = {"optimizers": {}}
        for key, opt in self.rule.optimizers.items():
            solo = mem.rule.optimizers[key].state_dict()
            mine = opt.member_state_dict(m, self.rule.order[key])
            for g, sg in zip(solo["param_groups"], mine["param_groups"], strict=True):
                g["lr"], g["initial_lr"] = sg["lr"], sg["initial_lr"]
            solo["state"] = mine["state"]
            state["optimizers"][key] = solo
        mem.rule.load_state_dict(state)
        return mem.model, mem.rule

    def subset(self, keep: list[int]) -> Stack:
        """A stack of the members ``keep`` (in that order), each carrying on exactly where it is: for dropping a
        diverged member, or one whose job stops earlier (a promotion rung)."""
        states = [self.member_state(m) for m in keep]
        phase = self.rule.phase
        new = Stack([self.members[m] for m in keep])
        for j, state in enumerate(states):
            new.load_member_state(j, state)
        new.rule.phase = phase
        return new

    def load_member_state(self, m: int, state: dict[str, Any]) -> None:
        """Put a solo checkpoint's state (``Trainer.save``'s keys) into member m."""
        from bioscale.stack.rng import RNGState

        mem = self.members[m]
        self.net.bind_member(m, mem.model)
        mem.model.load_state_dict(state["model"])  # into the stack's slice m: the solo model is bound to it
        mem.rule.load_state_dict(state["rule"])
        for key, opt in self.rule.optimizers.items():
            opt.load_member_state_dict(m, self.rule.order[key], mem.rule.optimizers[key].state_dict())
        _release_optimizer_state(mem)
        old = self.rng.states[m]
        cuda = state.get("cuda_rng") or []
        self.rng.states[m] = RNGState(state["torch_rng"].cpu(), cuda[0].cpu() if cuda and old.cuda is not None
                                      else old.cuda, state.get("python_rng", old.python), old.device)


def _release_optimizer_state(mem: Member) -> None:
    """Drop the solo rule's optimiser state (Adam's two moments: twice the weights), kept by the stack."""
    for opt in mem.rule.optimizers.values():
        opt.state.clear()


__all__ = ["PER_MEMBER", "STACKED_CLASSES", "STACK_ARCHS", "STACK_RULES", "Member", "Stack", "build_member",
           "shared_settings", "stackable"]
