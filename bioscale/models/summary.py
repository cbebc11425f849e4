"""What an architecture is for a dataset: its layers, output shapes, parameter counts and the memory one
training step needs, computed without allocating it.

The model is built on PyTorch's "meta" device (shapes only, no storage) so that even the ~240M-parameter
ImageNet LC net summarises instantly. Memory of one training step at ``batch_size``:
- params, grads: one copy each of every parameter;
- optimizer: Adam's two moment buffers (2 x params), the fused step (the default ``optim.impl``) makes no
  parameter-sized temporaries;
- activations: every tensor autograd saves for backward during one training-mode forward pass (each storage
  counted once, parameters excluded, the input batch included), found with ``saved_tensors_hooks``;
- peak: one forward and backward pass run on the meta device under a dispatch mode that follows every storage
  an op creates until it is freed (activations, gradients, the LC layer's workspace and every other
  temporary that is a tensor), plus the parameters and Adam's state, which live through the whole step.
Not included: memory inside one kernel (BLAS packing buffers), the CUDA context, and the allocator's caching
or retention (glibc keeps ~10-15% more resident on the CPU at default settings; see
tests/models/test_model_summary.py, which measures a CIFAR LC step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bioscale.data.base import DataShape
from bioscale.spec import ArchSpec

_SKIP = (nn.Tanh, nn.ReLU, nn.Identity, nn.Sigmoid)
"""Parameter-free elementwise modules: not worth a row (they don't change the shape)."""


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    """Per example, without the batch dimension."""
    params: int


@dataclass(frozen=True)
class ArchSummary:
    arch: str
    family: str
    input_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    backward_peak_bytes: int = 0
    """Peak of the live tensors a forward and backward pass creates (activations, gradients, temporaries)."""

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes

    @property
    def peak_bytes(self) -> int:
        """Predicted peak of a training step: parameters and Adam's state, plus the larger of the forward and
        backward pass's peak and the first step's gradients (when Adam's state is created)."""
        return self.param_bytes + self.optimizer_bytes + max(self.backward_peak_bytes, self.grad_bytes)


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages ops create while active, each until it is freed; ``peak`` is their maximum.
    Keyed by the storage object (meta storages have no address)."""

    def __init__(self) -> None:
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.live: dict[int, tuple[Any, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage()._cdata for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                st = t.untyped_storage()
                key = st._cdata
                if key not in inputs and key not in self.live and st.nbytes() > 0:
                    self.live[key] = (self._ref(st), st.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, self.live_bytes)
        return out

    @property
    def live_bytes(self) -> int:
        return sum(n for _, n in self.live.values())


def summarize(arch: ArchSpec, info: DataShape, batch_size: int) -> ArchSummary:
    """Build ``arch`` for ``info`` on the meta device and measure shapes and saved activations."""
    from bioscale.models import build_model

    with torch.device("meta"):
        model = build_model(arch, info)
    model.train()
    rows: dict[str, LayerRow] = {}
    hooks = []
    for name, module in model.named_modules():
        if next(iter(module.children()), None) is None and not isinstance(module, _SKIP):
            hooks.append(module.register_forward_hook(_row_hook(name, module, rows)))
    saved: dict[int, int] = {}
    keep: list[Tensor] = []
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            saved[storage._cdata] = storage.nbytes()
            keep.append(t)  # keep it alive so its storage address is not reused
        return t

    x = torch.zeros((batch_size, *info.input_shape), device="meta")
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            # a detector's training forward needs boxes: it names the part of it that is a plain forward
            getattr(model, "summary_forward", model)(x)
    finally:
        for h in hooks:
            h.remove()
    keep.clear()
    backward_peak = _backward_peak(model, x, info.num_classes)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    return ArchSummary(
        arch=arch.name, family=info.family, input_shape=tuple(info.input_shape), num_classes=info.num_classes,
        batch_size=batch_size, layers=list(rows.values()), total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in trainable), param_bytes=param_bytes, grad_bytes=grad_bytes,
        optimizer_bytes=2 * grad_bytes, activation_bytes=sum(saved.values()), backward_peak_bytes=backward_peak,
    )


def _backward_peak(model: nn.Module, x: Tensor, num_classes: int) -> int:
    """Peak live bytes of a forward pass, the loss and the backward pass, on the meta device. A classifier's
    loss is the cross-entropy of its logits; a detector's (``summary_forward``: backbone, FPN and heads, whose
    real loss needs boxes) a sum over its outputs, which backpropagates through the same graph."""
    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    tracker = LiveBytes()
    with tracker:
        out = getattr(model, "summary_forward", model)(x)
        if isinstance(out, Tensor):
            loss = nn.functional.cross_entropy(out, y)
        else:
            loss = sum(t.float().sum() for t in tree_flatten(out)[0] if isinstance(t, Tensor))
        loss.backward()
        grads = [p.grad for p in model.parameters()]  # held until the step, as the optimiser holds them
    del grads, loss
    for p in model.parameters():
        p.grad = None
    return tracker.peak


def _row_hook(name: str, module: nn.Module, rows: dict[str, LayerRow]):  # type: ignore[no-untyped-def]
    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, Tensor):
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows[name] = LayerRow(name, type(module).__name__, tuple(out.shape[1:]), params)

    return hook


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def render(summary: ArchSummary) -> str:
    """A plain-text table for ``bioscale arch summary``."""
    s = summary
    head = (f"{s.arch} for {s.family} input {'x'.join(map(str, s.input_shape))}, {s.num_classes} classes, "
            f"batch {s.batch_size}")
    name_w = max([len("layer"), *(len(r.name) for r in s.layers)])
    kind_w = max([len("type"), *(len(r.kind) for r in s.layers)])
    shape_w = max([len("output"), *(len("x".join(map(str, r.output_shape))) for r in s.layers)])
    lines = [head, "",
             f"{'layer':<{name_w}}  {'type':<{kind_w}}  {'output':>{shape_w}}  {'params':>12}",
             "-" * (name_w + kind_w + shape_w + 18)]
    for r in s.layers:
        shape = "x".join(map(str, r.output_shape))
        lines.append(f"{r.name:<{name_w}}  {r.kind:<{kind_w}}  {shape:>{shape_w}}  {r.params:>12,}")
    lines += [
        "",
        f"parameters         {s.total_params:>15,}  ({s.trainable_params:,} trainable)",
        f"memory, one training step at batch {s.batch_size} (computed, not measured):",
        f"  parameters       {fmt_bytes(s.param_bytes):>15}",
        f"  gradients        {fmt_bytes(s.grad_bytes):>15}",
        f"  Adam state       {fmt_bytes(s.optimizer_bytes):>15}",
        f"  saved activations{fmt_bytes(s.activation_bytes):>15}",
        f"  total            {fmt_bytes(s.total_bytes):>15}",
        f"  peak of a step   {fmt_bytes(s.peak_bytes):>15}  (with Adam state and backward's temporaries)",
    ]
    return "\n".join(lines)


def describe_arch(name: str, dataset: str, batch_size: int, params: list[str], rule: str | None = None,
                  stack: int = 1, device: str = "cuda") -> str:
    """``bioscale arch summary``: the table for arch ``name`` built for ``dataset``'s registered shape, with
    ``params`` as KEY=VALUE strings; an arch that cannot be built for that dataset is refused by the same
    compatibility check grid validation uses. With ``rule`` (bp when only ``stack`` is given) it adds the
    traced memory of that rule's own step, for one job and for a stack of ``stack`` jobs
    (``bioscale.models.step_memory``), on the code paths of a ``device`` ("cuda" or "cpu") device."""
    from pydantic import ValidationError

    from bioscale.catalog import ARCHS, DATASETS, compat
    from bioscale.errors import BioscaleError
    from bioscale.grid import parse_set

    record, data = ARCHS.get(name), DATASETS.get(dataset)
    try:
        arch_params = record.params.model_validate(parse_set(params))
    except ValidationError as exc:
        raise BioscaleError(f"arch {name!r}: {exc.errors()[0]['msg']} in --param; `bioscale list archs` "
                            "shows its parameters.") from None
    problems = compat.arch_problems(record, data, arch_params)
    if problems:
        raise BioscaleError(f"{'; '.join(problems)}. Datasets it can be built for: "
                            f"{', '.join(compat.datasets_for_arch(record))}.")
    shape = DataShape(data.family, data.input_shape, data.num_classes, 0, 0)
    spec = ArchSpec(name=name, params=arch_params.model_dump(mode="json"))
    text = render(summarize(spec, shape, batch_size))
    if rule is None and stack == 1:
        return text
    from bioscale.catalog import RULES
    from bioscale.models.step_memory import render_step, trace_step

    rule = RULES.get(rule or "bp").name
    solo = trace_step(spec, dataset, shape, rule, batch_size, device_type=device)
    if stack == 1:
        return f"{text}\n\n{render_step(solo, device=device)}"
    stacked = trace_step(spec, dataset, shape, rule, batch_size, stack, device_type=device)
    return f"{text}\n\n{render_step(stacked, solo, device=device)}"
