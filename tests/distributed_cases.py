"""Exactness cases for ``tests/test_distributed.py``, run on 2 gloo ranks on the CPU.

``python tests/distributed_cases.py OUT.json`` spawns two ranks (``torch.multiprocessing.spawn``; a script
of its own because pytest's importlib mode makes test-module functions unpicklable for spawned children).
Each rank joins the group through ``bioscale.distributed.init_from_env`` (as under torchrun), trains every
case on its rows of the same global batches, then replays the case alone on the whole batches (the single
process reference). Rank 0 writes, per case, the largest difference of any parameter, buffer (feedback
matrices, inverses, random features, batch-norm statistics) or optimiser state from the reference, and
how far training moved them (so a case that trained nothing cannot pass). Everything is float64.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLASSES = 5
SHAPE = (1, 4, 4)
BATCHES = (8, 8, 7, 1, 6)
"""Global batch sizes: even, uneven (4 + 3 rows), one too small to split (every rank holds it whole)."""

CASES: dict[str, dict[str, Any]] = {
    "bp": {"rule": "bp"},
    "bp-batch-manhattan": {"rule": {"name": "bp", "params": {"batch_manhattan": True}},
                           "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9}},
    "fa": {"rule": "fa"},
    "ss": {"rule": "ss"},
    "kp": {"rule": {"name": "kp", "params": {"decay": 0.01}}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "dfa": {"rule": "dfa"},
    "frsf": {"rule": "frsf"},
    "brsf": {"rule": "brsf"},
    "dtp": {"rule": {"name": "dtp", "params": {"sigma": 0.3, "alpha": 0.2}}},
    "sdtp": {"rule": {"name": "sdtp", "params": {"sigma": 0.3}}},
    "sdtp-alternating": {"rule": {"name": "sdtp", "params": {"sigma": 0.3, "schedule": "alternating"}}},
    "aosdtp": {"rule": {"name": "aosdtp", "params": {"sigma": 0.3, "aux_units": 7}}},
    "dtp-sgd-inverse": {"rule": {"name": "dtp", "params": {"sigma": 0.2}},
                        "inverse_optim": {"name": "sgd", "lr": 0.1}},
}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(torch.rand((n, *SHAPE), generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (n,), generator=g))
            for n in BATCHES]


def _state(model: nn.Module, rule: Any) -> dict[str, torch.Tensor]:
    from bioscale.distributed import _flatten

    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    out.update((k, v.detach().clone()) for k, v in _flatten(rule.state_dict(), "rule") if torch.is_tensor(v))
    return out


def _build(overrides: dict[str, Any]) -> tuple[nn.Module, Any]:
    from bioscale.data.base import DataShape
    from bioscale.grid import resolve
    from bioscale.models import build_model
    from bioscale.rules import build_rule

    raw = {"dataset": "synthetic", "arch": {"name": "fc", "params": {"hidden": [12, 10]}},
           "optim": {"name": "adam", "lr": 0.01}, **overrides}
    spec = resolve(raw)
    torch.manual_seed(0)
    rule = build_rule(spec)
    model = rule.prepare(build_model(spec.arch, DataShape("mnist", SHAPE, CLASSES, 100, 100)))
    rule.setup(torch.device("cpu"))
    return model, rule


def _train(model: nn.Module, rule: Any, group: Any) -> None:
    from bioscale import distributed
    from bioscale.data.base import batch_shard

    for phase in rule.phases(0):
        rule.begin_phase(phase)
        for x, y in _batches():
            if group is None:
                rule.train_step(x, y)
                continue
            shard = batch_shard(len(y), group.rank, group.world)
            distributed.set_step_shard(rule, shard)
            rule.train_step(x[shard.rows], y[shard.rows])
    if group is not None:
        distributed.set_step_shard(rule, None)


def _compare(dist_state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
             initial: dict[str, torch.Tensor]) -> dict[str, Any]:
    assert dist_state.keys() == ref.keys(), sorted(set(dist_state) ^ set(ref))
    diff = {k: float((dist_state[k].double() - ref[k].double()).abs().max()) if ref[k].numel() else 0.0
            for k in ref}
    change = {k: float((ref[k].double() - initial[k].double()).abs().max()) for k in initial
              if k.startswith("model.") and initial[k].numel() and initial[k].is_floating_point()}
    learned = [v for k, v in change.items() if "feedback" in k or "inverses" in k]
    worst = max(diff, key=diff.get)  # type: ignore[arg-type]
    return {"max_diff": diff[worst], "worst": worst, "moved": max(change.values()),
            "feedback_moved": max(learned, default=0.0), "tensors": len(diff)}


def rule_case(name: str, group: Any) -> dict[str, Any]:
    from bioscale import distributed

    overrides = CASES[name]
    model, rule = _build(overrides)
    initial = _state(model, rule)
    distributed.GradientSync(group, rule).attach()
    distributed.check_replicas(group, model, rule, "at the start")
    _train(model, rule, group)
    distributed.check_replicas(group, model, rule, "after training")  # the ranks agree bit for bit
    dist_state = _state(model, rule)
    ref_model, ref_rule = _build(overrides)  # one process, the whole batches, no synchronisation
    _train(ref_model, ref_rule, None)
    return _compare(dist_state, _state(ref_model, ref_rule), initial)


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 6),
                         nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, CLASSES))


def batchnorm_case(group: Any) -> dict[str, Any]:
    """sync_bn: a conv net with BatchNorm2d and BatchNorm1d, on batches that split unevenly."""
    from bioscale import distributed
    from bioscale.data.base import batch_shard
    from bioscale.rules.base import BPParams
    from bioscale.rules.bp import BP
    from bioscale.spec import OptimSpec

    def build() -> tuple[nn.Module, Any]:
        rule = BP(BPParams(), OptimSpec(name="sgd", lr=0.1, momentum=0.5))
        model = rule.prepare(_bn_net())
        rule.setup(torch.device("cpu"))
        return model, rule

    model, rule = build()
    model = distributed.convert_sync_batchnorm(model)
    initial = _state(model, rule)
    distributed.GradientSync(group, rule).attach()
    batches = [b for b in _batches() if len(b[1]) > 1]
    for x, y in batches:
        shard = batch_shard(len(y), group.rank, group.world)
        distributed.set_step_shard(rule, shard)
        rule.train_step(x[shard.rows], y[shard.rows])
    distributed.set_step_shard(rule, None)
    distributed.check_replicas(group, model, rule, "after training")
    dist_state = _state(model, rule)
    ref_model, ref_rule = build()
    for x, y in batches:
        ref_rule.train_step(x, y)
    return _compare(dist_state, _state(ref_model, ref_rule), initial)


def mismatch_case(group: Any) -> str:
    """A feedback matrix that differs on one rank is caught, on every rank, by name."""
    from bioscale import distributed

    model, rule = _build({"rule": "fa"})
    if group.rank == 1:
        with torch.no_grad():
            model.layers[1].op.feedback.matrix[0, 0] += 1e-9
    try:
        distributed.check_replicas(group, model, rule, "at the start")
    except distributed.ReplicaMismatch as exc:
        return str(exc)
    return ""


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    from bioscale import distributed

    group = distributed.init_from_env("cpu")
    try:
        results: dict[str, Any] = {name: rule_case(name, group) for name in CASES}
        results["sync_bn"] = batchnorm_case(group)
        results["mismatch"] = mismatch_case(group)
        if rank == 0:
            Path(out).write_text(json.dumps(results, indent=1))
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, _free_port(), sys.argv[1]), nprocs=2, join=True)
