"""The rules' training steps on a ``StackedNet``: member m computes exactly its solo rule's step.

Each class mirrors one solo rule family step for step (same order of operations, same draws from each
member's generator); per-member numbers (lr & co in ``StackedOptimizer``, sigma, alpha, KP's decay) are [M]
vectors. Every loss is the sum over members of the member's own (batch-mean) loss, so each member's gradient
is its solo gradient. Which solo rule classes have a stacked step is ``STACKED_RULES``; anything else is
refused (``bioscale.stack.stackable``), never run approximately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bioscale.errors import BioscaleError
from bioscale.rules import bp, feedback, target
from bioscale.stack.layers import StackedNet, StackedSignMagnitudeFeedback
from bioscale.stack.optim import StackedGroup, StackedOptimizer

if TYPE_CHECKING:
    from bioscale.rules.base import Rule
    from bioscale.stack.rng import MemberRNG


@dataclass
class StackedStep:
    loss: Tensor
    """[M], detached: each member's task loss on its batch (its solo ``StepOutput.loss``)."""
    logits: Tensor
    """[M, B, classes], detached."""


def member_ce(logits: Tensor, y: Tensor) -> Tensor:
    """[M]: each member's batch-mean cross-entropy (``nn.CrossEntropyLoss()`` on its own rows)."""
    m, n, c = logits.shape
    logits = target.full(logits)
    return F.cross_entropy(logits.reshape(m * n, c), y.reshape(m * n), reduction="none").view(m, n).mean(1)


def member_sq_error(a: Tensor, b: Tensor) -> Tensor:
    """[M]: ``target.sq_error`` per member: ||a - b||² summed over units, averaged over the member's batch."""
    d = F.mse_loss(target.full(a), target.full(b), reduction="none")
    return d.reshape(d.shape[0], -1).sum(1) / a.shape[1]


def vec(values: list[float], like: Tensor) -> Tensor:
    """[M, 1, ...] of per-member scalars, broadcasting over ``like`` ([M, B, ...])."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.dim() - 1))


class StackedRule:
    """Shared: the member rules (prepared, set up: their optimisers give the groups and order), the stacked
    optimisers, and the phase protocol of ``bioscale.rules.base.Rule``."""

    def __init__(self, rules: list[Rule], net: StackedNet, rng: MemberRNG) -> None:
        self.rules = rules
        self.net = net
        self.rng = rng
        self.m = len(rules)
        self.phase = "train"
        self.params = [r.params for r in rules]
        names = {id(p): n for n, p in rules[0].model.named_parameters()}  # type: ignore[union-attr]
        stacked = dict(net.named_parameters())
        self.optimizers: dict[str, StackedOptimizer] = {}
        self.order: dict[str, list[Tensor]] = {}
        """Per optimiser: the stacked parameters in the solo optimiser's parameter order."""
        for key, opt0 in rules[0].optimizers.items():
            groups, order = [], []
            for gi, g in enumerate(opt0.param_groups):
                ps = [stacked[names[id(p)]] for p in g["params"]]
                order += ps
                groups.append(_group(ps, [r.optimizers[key].param_groups[gi] for r in rules]))
            self.optimizers[key] = StackedOptimizer(groups, [r.optim_spec(key) for r in rules])
            self.order[key] = order

    def phases(self, epoch: int) -> list[str]:
        return self.rules[0].phases(epoch)

    def begin_epoch(self, epoch: int) -> None:
        for opt in self.optimizers.values():
            opt.set_epoch(epoch)

    def begin_phase(self, phase: str) -> None:
        self.rules[0].begin_phase(phase)  # validates the name as the solo rule does
        self.phase = phase

    def train_step(self, x: Tensor, y: Tensor) -> StackedStep:
        raise NotImplementedError


def _group(params: list[Tensor], solo: list[dict[str, Any]]) -> StackedGroup:
    """The members' copies of one solo param group: each member's own initial and current lr."""
    return StackedGroup(params, [float(g.get("initial_lr", g["lr"])) for g in solo], [float(g["lr"]) for g in solo])


class StackedBackward(StackedRule):
    """bp, fa, ss, frsf, brsf, kp: ``BackwardRule.train_step`` with the family's hooks."""

    def rule_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(x)
        loss = member_ce(logits, y)
        loss.sum().backward()
        return loss, logits

    def train_step(self, x: Tensor, y: Tensor) -> StackedStep:
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss, logits = self.rule_backward(x, y)
        self.before_step()
        if getattr(self.params[0], "batch_manhattan", False):
            grads = [p.grad for p in opt.params() if p.grad is not None]
            if grads:
                torch._foreach_sign_(grads)
        opt.step()
        self.after_step()
        return StackedStep(loss.detach(), logits.detach())

    def before_step(self) -> None:
        return None

    def after_step(self) -> None:
        return None


class StackedBRSF(StackedBackward):
    """brSF: each member redraws its |M| after every update, layer by layer, from its own generator."""

    def after_step(self) -> None:
        sources = [op.feedback for op in self.net.feedback_ops()]
        assert all(isinstance(s, StackedSignMagnitudeFeedback) for s in sources)
        for m in range(self.m):
            with self.rng.use(m):
                for s in sources:
                    s.redraw_member_(m)  # type: ignore[union-attr]


class StackedKP(StackedBackward):
    """Kolen-Pollack: B gets W's update (B - W stashed before the step), then both decay per member."""

    def _pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        ops = self.net.feedback_ops()
        return [op.weight for op in ops], [op.feedback.matrix for op in ops]

    def before_step(self) -> None:
        ws, bs = self._pairs()
        with torch.no_grad():
            torch._foreach_sub_(bs, ws)

    def after_step(self) -> None:
        ws, bs = self._pairs()
        lr = {id(p): g.lr for g in self.optimizers["model"].groups for p in g.params}
        with torch.no_grad():
            torch._foreach_add_(bs, ws)
            for w, b in zip(ws, bs, strict=True):
                factors = []
                for m, p in enumerate(self.params):
                    if p.decay <= 0:
                        factors.append(1.0)
                    elif p.decay_mode == "per_step":
                        factors.append(1.0 - p.decay)
                    else:
                        factors.append(1.0 - float(lr[id(w)][m]) * p.decay)
                if any(f != 1.0 for f in factors):
                    f = vec(factors, w)
                    w.mul_(f)
                    b.mul_(f)


class StackedDFA(StackedBackward):
    """DFA: ``feedback.DFA.rule_backward`` with each member's B_l: e_m B_l,m seeds hidden layer l."""

    def rule_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        hidden: list[tuple[Tensor, Tensor]] = []
        h = x
        for layer in self.net.layers[:-1]:
            out = layer(h)
            hidden.append((out, layer.direct_feedback.matrix))
            h = out.detach()
        logits = self.net.layers[-1](h)
        loss = member_ce(logits, y)
        (e,) = torch.autograd.grad(loss.sum(), logits)  # [M, B, C]: member m's dL_m/dlogits
        outputs, seeds = [logits], [e]
        for out, b in hidden:
            if out.requires_grad:
                outputs.append(out)
                seeds.append(e.to(b.dtype).matmul(b).to(out.dtype).view_as(out))
        torch.autograd.backward(outputs, seeds)
        return loss, logits


class StackedTarget(StackedRule):
    """dtp, sdtp, aosdtp: ``target.TargetRule.train_step`` over [M, B, ...] activations, with each member's
    sigma (and DTP's alpha), its noise from its own generator, and two stacked optimisers."""

    def __init__(self, rules: list[Rule], net: StackedNet, rng: MemberRNG) -> None:
        super().__init__(rules, net, rng)
        self.proto: target.TargetRule = rules[0]  # type: ignore[assignment]
        self.inverted = list(self.proto.inverted_layers())
        self.noise_preserving = self.proto.noise_preserving
        self.needs_top_grad = self.proto.needs_top_grad
        self.aux = type(self.proto) is target.AOSDTP

    # -- codes and targets (TargetRule's, with the member dim in front) -------------------------------

    def aux_code(self, h_prev: Tensor) -> Tensor | None:
        return self.net.aux_features(h_prev) if self.aux else None

    def output_code(self, logits: Tensor, aux: Tensor | None) -> Tensor:
        p = torch.softmax(target.full(logits), dim=-1)
        return p if aux is None else torch.cat([p, aux.to(p.dtype)], dim=-1)

    def label_code(self, y: Tensor, logits: Tensor, aux: Tensor | None) -> Tensor:
        onehot = F.one_hot(y, logits.shape[-1]).to(target.full(logits).dtype)
        return onehot if aux is None else torch.cat([onehot, aux.to(onehot.dtype)], dim=-1)

    def code(self, i: int, h: Tensor, h_prev: Tensor) -> Tensor:
        return self.output_code(h, self.aux_code(h_prev)) if i == len(self.net.layers) - 1 else h

    def top_target(self, hs: list[Tensor], y: Tensor, top_grad: Tensor | None, aux: Tensor | None
                   ) -> tuple[int, Tensor]:
        if not self.needs_top_grad:
            return len(hs) - 1, self.label_code(y, hs[-1], aux)
        assert top_grad is not None
        h = hs[-2]
        n = h.shape[1]
        alpha = [p.alpha if p.alpha_convention == "per_example" else p.alpha / n for p in self.params]
        return len(hs) - 2, h - vec(alpha, h) * top_grad.view_as(h)

    @torch.no_grad()
    def targets(self, hs: list[Tensor], y: Tensor, top_grad: Tensor | None = None) -> list[Tensor]:
        hs = [h.detach() for h in hs]
        last = len(hs) - 1
        aux = self.aux_code(hs[last - 1])
        top, tgt = self.top_target(hs, y, top_grad, aux)
        out: dict[int, Tensor] = {}
        if top < last:
            out[top] = tgt
        for i in range(top - 1, -1, -1):
            g = self.net.inverses[str(i + 1)]
            current = self.output_code(hs[last], aux) if i + 1 == last else hs[i + 1]
            both = g(torch.cat([tgt, current], dim=1))
            g_target, g_current = both.split(tgt.shape[1], dim=1)
            tgt = hs[i] - g_current + g_target
            out[i] = tgt
        return [out[i] for i in range(len(hs) - 1)]

    def forward_local(self, x: Tensor, grad_at_top: bool = False) -> tuple[list[Tensor], Tensor]:
        return target.forward_local(self.net.layers, x, grad_at_top)

    # -- the updates ------------------------------------------------------------------------------------

    def _noise(self, inputs: list[Tensor]) -> list[Tensor | None]:
        """Per inverted layer, the members' N(0, 1) noise shaped like its input (zeros for sigma 0, which
        draws nothing), drawn member by member in the solo rule's order (layers ascending)."""
        sigmas = [p.sigma for p in self.params]
        if not any(s > 0 for s in sigmas):
            return [None] * len(inputs)
        noise = [torch.zeros(h.shape, dtype=h.dtype, device=h.device) for h in inputs]  # contiguous
        for m, s in enumerate(sigmas):
            if s > 0:
                with self.rng.use(m):
                    for z in noise:
                        # = the solo rule's randn_like of its (contiguous) h, drawn straight into z's
                        # contiguous row: logical order, whatever the strides of h[m]
                        z[m].normal_()
        return noise

    def _inverse_update(self, hs: list[Tensor], x: Tensor) -> None:
        opt = self.optimizers.get("inverse")
        if opt is None:
            return
        opt.zero_grad(set_to_none=True)
        inputs = [x, *hs[:-1]]
        prevs = [inputs[i].detach() for i in self.inverted]
        noise = self._noise(prevs)
        sigma = None
        total = None
        for i, h_prev, z in zip(self.inverted, prevs, noise, strict=True):
            if z is None:
                noisy = h_prev
            else:
                sigma = vec([p.sigma for p in self.params], h_prev)
                noisy = h_prev + sigma * z
            with torch.no_grad():
                code = self.code(i, self.net.layers[i](noisy), noisy)
            rec = self.net.inverses[str(i)](code)
            loss = member_sq_error(rec, noisy if self.noise_preserving else h_prev)
            total = loss if total is None else total + loss
        assert total is not None
        total.sum().backward()
        opt.step()

    def _forward_update(self, hs: list[Tensor], top_input: Tensor, y: Tensor) -> Tensor:
        self.optimizers["model"].zero_grad(set_to_none=True)
        ce = member_ce(hs[-1], y)
        top_grad = None
        if self.needs_top_grad:
            ce.sum().backward()
            top_grad = top_input.grad * top_input.shape[1]
        targets = self.targets(hs, y, top_grad)
        local = sum(member_sq_error(h, t) for h, t in zip(hs[:-1], targets, strict=True))
        (local if self.needs_top_grad else ce + local).sum().backward()  # type: ignore[union-attr]
        return ce

    def train_step(self, x: Tensor, y: Tensor) -> StackedStep:
        if self.phase == "inverse":
            with torch.no_grad():
                hs = self.net.forward_all(x)
                ce = member_ce(hs[-1], y)
            self._inverse_update(hs, x)
            return StackedStep(ce.detach(), hs[-1].detach())
        hs, top_input = self.forward_local(x, grad_at_top=self.needs_top_grad)
        ce = self._forward_update(hs, top_input, y)
        if self.phase == "train":
            self._inverse_update(hs, x)
        self.optimizers["model"].step()
        return StackedStep(ce.detach(), hs[-1].detach())


STACKED_RULES: dict[type, type[StackedRule]] = {
    bp.BP: StackedBackward,
    feedback.FA: StackedBackward,
    feedback.SignSymmetry: StackedBackward,
    feedback.FRSF: StackedBackward,
    feedback.BRSF: StackedBRSF,
    feedback.KolenPollack: StackedKP,
    feedback.DFA: StackedDFA,
    target.DTP: StackedTarget,
    target.SDTP: StackedTarget,
    target.AOSDTP: StackedTarget,
}
"""Solo rule class (exactly: a subclass may change the step) -> its stacked step."""


def stacked_rule(rules: list[Rule], net: StackedNet, rng: MemberRNG) -> StackedRule:
    kinds = {type(r) for r in rules}
    if len(kinds) != 1:
        raise BioscaleError(f"stacked members must run one rule, got {sorted(k.__name__ for k in kinds)}.")
    kind = kinds.pop()
    impl = STACKED_RULES.get(kind)
    if impl is None:
        raise BioscaleError(f"rule {kind.__name__} has no stacked step; run its jobs unstacked (--stack 1).")
    return impl(rules, net, rng)
