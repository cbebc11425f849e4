"""The GPU path as job options (issue 13, point 3), checked on the CPU: ``train.amp: bf16`` autocasts there
too and stays close to float32; ``train.channels_last`` and ``train.compile`` give the plain run's numbers
within float rounding, take effect (weights in NHWC, a compiled module), are run-time (same job id), and a
rule whose step cannot be compiled runs eager with a note."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule

from bioscale import accel
from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.preflight import find_problems
from bioscale.spec import JobSpec, TrainSpec
from bioscale.store import Store
from bioscale.train import Trainer, run_job

FC = {"name": "fc", "params": {"hidden": [32, 32]}}
CONV = {"name": "conv", "params": {"layers": [[3, 4, 2], [3, 8, 1]], "hidden": [16]}}
LC = {"name": "lc", "params": {"layers": [[3, 4, 2], [3, 8, 1]], "hidden": [16]}}


def _spec(arch: Any, rule: str, shape: tuple[int, ...] = (1, 8, 8), steps: int = 3, lr: float = 0.05,
          **train: Any) -> JobSpec:
    """SGD: its update is linear in the gradient, so rounding differences stay rounding-sized (Adam's first
    steps move every weight by about lr whatever the gradient's size, turning a sign flip of a tiny gradient
    component into an lr-sized difference)."""
    return resolve({
        "dataset": {"name": "synthetic", "params": {"train_size": 16 * steps, "test_size": 16, "shape": list(shape)}},
        "arch": arch, "rule": rule, "optim": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "device": "cpu", "diagnostics_every": 0,
                  **train}})


def _run(tmp_path: Path, spec: JobSpec) -> tuple[list[float], dict[str, torch.Tensor], Trainer, torch.nn.Module, Any]:
    """One epoch of ``spec`` through the trainer: (each step's loss, how far training moved each float parameter
    and buffer, trainer, model, rule)."""
    job = Job("accel", spec, "test")
    trainer = Trainer(job, Store(tmp_path).job_dir("accel", job.job_id))
    data, model, rule = trainer.build()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses: list[float] = []
    step = rule.train_step

    def recorded(x: torch.Tensor, y: torch.Tensor) -> Any:
        out = step(x, y)
        losses.append(float(out.loss))
        return out

    rule.train_step = recorded  # type: ignore[method-assign]
    trainer.train_epoch(0, data, model, rule)
    moved = {k: v.detach().double() - start[k].double() for k, v in model.state_dict().items() if v.is_floating_point()}
    return losses, moved, trainer, model, rule


def _close(a: tuple, b: tuple, rtol: float, atol: float) -> None:
    """Losses step by step within rtol/atol, and what training did to the model (every float parameter and
    buffer's change from the same start) within ``rtol`` of its size, measured over the whole model: rounding
    makes a near-cancelling sum such as a batch-norm bias's gradient differ by more than rtol of itself."""
    torch.testing.assert_close(torch.tensor(a[0]), torch.tensor(b[0]), rtol=rtol, atol=atol)
    assert a[1].keys() == b[1].keys()
    diff = torch.cat([(a[1][k] - b[1][k]).flatten() for k in a[1]]).norm()
    size = torch.cat([a[1][k].flatten() for k in a[1]]).norm()
    assert size > 0 and diff <= rtol * size, f"the updates differ by {diff / size:.2e} of their size"


# ---- the spec -------------------------------------------------------------------------------------------


def test_the_options_parse_and_only_amp_is_in_the_job_id() -> None:
    assert TrainSpec(compile=True).compile == "default" and TrainSpec(compile="off").compile is False
    assert TrainSpec(compile="reduce-overhead").compile == "reduce-overhead"
    with pytest.raises(ValueError, match=r"train\.compile is false, default, reduce-overhead"):
        TrainSpec(compile="fast")
    with pytest.raises(ValueError, match="bf16"):
        TrainSpec(amp="fp16")
    plain = _spec(FC, "bp").job_id()
    assert _spec(FC, "bp", channels_last=True, compile="reduce-overhead").job_id() == plain
    assert _spec(FC, "bp", compile=True).job_id() == plain  # the old bool: hashed as false, like every job
    ids = {plain, _spec(FC, "bp", amp=True).job_id(), _spec(FC, "bp", amp="bf16").job_id()}
    assert len(ids) == 3  # bf16 changes the numbers


def test_autocast_follows_the_setting_and_the_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not accel.autocast_enabled(True, cpu) and accel.autocast_enabled(True, cuda)
    assert accel.autocast_enabled("bf16", cpu) and not accel.autocast_enabled(False, cuda)


# ---- bf16 autocast on the CPU ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["bp", "fa", "dtp"])
def test_bf16_on_the_cpu_when_asked_close_to_float32(tmp_path: Path, rule: str) -> None:
    plain = _run(tmp_path / "a", _spec(FC, rule))
    ignored = _run(tmp_path / "b", _spec(FC, rule, amp=True))  # true: CUDA only, so float32 here
    bf16 = _run(tmp_path / "c", _spec(FC, rule, amp="bf16"))
    assert ignored[0] == plain[0] and "train.amp=true: float32 on cpu" in (ignored[2].rule_setup or "")
    assert bf16[0] != plain[0]  # autocast ran: bf16 rounding shows in the losses
    _close(bf16[:2], plain[:2], rtol=0.05, atol=0.02)


# ---- channels_last --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "rule", "shape"), [
    (CONV, "bp", (3, 8, 8)), (CONV, "fa", (3, 8, 8)), (CONV, "ss", (3, 8, 8)), (CONV, "kp", (3, 8, 8)),
    (LC, "fa", (3, 8, 8)), (CONV, "dtp", (3, 8, 8)), ("resnet18", "fa", (3, 16, 16))])
def test_channels_last_gives_the_same_numbers(tmp_path: Path, arch: Any, rule: str, shape: tuple) -> None:
    lr = 0.002 if arch == "resnet18" else 0.05  # 20 batch norms over 16 tiny images: a large lr amplifies rounding
    plain = _run(tmp_path / "a", _spec(arch, rule, shape, lr=lr))
    nhwc = _run(tmp_path / "b", _spec(arch, rule, shape, lr=lr, channels_last=True))
    four_d = [p for p in nhwc[3].parameters() if p.dim() == 4]  # the LC net has none: NHWC batches only
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    assert arch is LC or not all(p.is_contiguous() for p in four_d)  # really NHWC, not 1x1 kernels that are both
    _close(nhwc[:2], plain[:2], rtol=1e-4, atol=1e-5)


def test_channels_last_reaches_the_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    spec = _spec(CONV, "bp", (3, 8, 8), channels_last=True)
    job = Job("accel", spec, "test")
    trainer = Trainer(job, Store(tmp_path).job_dir("accel", job.job_id))
    data, model, rule = trainer.build()
    step = rule.train_step
    monkeypatch.setattr(rule, "train_step", lambda x, y: (seen.append(
        x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()), step(x, y))[1])
    trainer.train_epoch(0, data, model, rule)
    assert seen == [True] * 3


# ---- torch.compile --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["fa", "ss", "brsf", "kp"])
def test_compile_traces_the_feedback_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """aot_eager: the feedback autograd Functions, the sign feedback and the redrawn or trained B traced into
    forward and backward graphs (inductor's generated code: ``test_compile_with_inductor``)."""
    monkeypatch.setattr(accel, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    plain = _run(tmp_path / "a", _spec(CONV, rule, (3, 8, 8)))
    compiled = _run(tmp_path / "b", _spec(CONV, rule, (3, 8, 8), compile="reduce-overhead", channels_last=True))
    assert "train.compile=reduce-overhead: model forward compiled" in (compiled[2].rule_setup or "")
    assert isinstance(compiled[4].model, OptimizedModule) and not isinstance(plain[4].model, OptimizedModule)
    assert compiled[2].step_begin is None  # CUDA graphs' step mark: CUDA only
    _close(compiled[:2], plain[:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("rule", "why"), [("dfa", "dfa runs each layer on its own"),
                                         ("dtp", "target rules call the net's layers and inverses one at a time")])
def test_a_rule_that_calls_layers_one_by_one_runs_eager_with_a_note(tmp_path: Path, rule: str, why: str) -> None:
    spec = _spec(FC, rule, compile="default")
    result = run_job(Job("accel", spec, "test"), Store(tmp_path / "a"))
    assert result.status == "done", result.error
    assert f"train.compile=default not applied: {why}" in (result.rule_setup or "")
    assert (result.rule_setup or "").endswith("(ran eager)")
    plain = _run(tmp_path / "b", _spec(FC, rule))
    eager = _run(tmp_path / "c", spec)
    assert eager[0] == plain[0] and not isinstance(eager[4].model, OptimizedModule)


@pytest.mark.slow
def test_compile_with_inductor(tmp_path: Path) -> None:
    """The real thing on the CPU (inductor's C++): bp on the FC net, a few steps, the eager run's numbers."""
    torch._dynamo.reset()
    plain = _run(tmp_path / "a", _spec(FC, "bp"))
    compiled = _run(tmp_path / "b", _spec(FC, "bp", compile="default"))
    assert "model forward compiled" in (compiled[2].rule_setup or "")
    _close(compiled[:2], plain[:2], rtol=1e-4, atol=1e-5)


def test_preflight_refuses_compile_without_a_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    jobs = [Job("g", _spec(FC, "bp", compile="default"), "a"), Job("g", _spec(FC, "fa"), "b")]
    problems = find_problems(jobs, tmp_path / "results")
    assert len(problems) == 1 and [j.label for j in problems[0].jobs] == ["a"]
    assert "needs a C++ compiler" in problems[0].message and "train.compile=false" in problems[0].message
    monkeypatch.setattr(accel.shutil, "which", lambda name: "/usr/bin/" + name)
    assert find_problems(jobs, tmp_path / "results") == []


def test_random_draws_do_not_depend_on_the_memory_layout() -> None:
    """The target rules' noise and brSF's redrawn magnitudes: the same values at each position for an NHWC
    tensor as for a plain one (an in-place or ``*_like`` draw fills memory order, so NHWC would permute them)."""
    from bioscale.layers.feedback import draw_feedback_
    from bioscale.rules import build_rule

    plain = torch.empty(4, 3, 5, 5)
    nhwc = plain.contiguous(memory_format=torch.channels_last)
    rule = build_rule(_spec(FC, "dtp"))
    for draw in (rule.noise_like, lambda t: draw_feedback_(t, "xavier", "uniform")):
        torch.manual_seed(7)
        a = draw(plain.clone())
        torch.manual_seed(7)
        b = draw(nhwc.clone())
        assert torch.equal(a, b)
    torch.manual_seed(7)
    expected = torch.randn_like(plain)
    torch.manual_seed(7)
    assert torch.equal(rule.noise_like(plain), expected)  # plain tensors: the numbers of before, ids' results kept


def test_cuda_graphs_get_a_step_mark_before_every_training_step(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """reduce-overhead on CUDA: ``cudagraph_mark_step_begin`` before each step (the trainer's wiring, checked
    on the CPU with the mark replaced by a counter); nothing for other modes or devices."""
    cuda = torch.device("cuda")
    assert accel.step_marker("reduce-overhead", cuda) is torch.compiler.cudagraph_mark_step_begin
    assert accel.step_marker("default", cuda) is None
    assert accel.step_marker("reduce-overhead", torch.device("cpu")) is None
    marks: list[int] = []
    monkeypatch.setattr(accel, "step_marker", lambda mode, device: lambda: marks.append(len(steps)))
    steps: list[int] = []
    spec = _spec(FC, "bp")
    job = Job("accel", spec, "test")
    trainer = Trainer(job, Store(tmp_path).job_dir("accel", job.job_id))
    data, model, rule = trainer.build()
    step = rule.train_step
    monkeypatch.setattr(rule, "train_step", lambda x, y: (steps.append(1), step(x, y))[1])
    trainer.train_epoch(0, data, model, rule)
    assert marks == [0, 1, 2] and len(steps) == 3  # each mark comes right before its step
