"""The example plugin ``examples/plugin_drtp.py``: DRTP's exact backward signal, and the plugin end to end.

DRTP (Frenkel, Lefebvre & Bol 2021) on a small tanh MLP, with the trainer's batch-mean loss over N examples:
    output layer:  delta_L = e = (softmax(logits) - onehot(y)) / N       (its true gradient, as DFA)
    hidden l:      delta_l = (onehot(y) / N) B_l * (1 - h_l^2)           (the target, not e; nothing from above)
    every layer:   grad W_l = delta_l^T h_{l-1},  grad b_l = sum_n delta_l
The expected gradients are computed here by hand, independently of the rule and of autograd.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bioscale.catalog import RULES, discover, load_plugins
from bioscale.data.base import DataShape
from bioscale.models import build_model
from bioscale.models.base import LayeredNet
from bioscale.models.presets import FCParams, build_fc
from bioscale.rules.base import Rule
from bioscale.rules.feedback import DFA, BackwardParams
from bioscale.spec import ArchSpec, JobResult, OptimSpec

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "examples" / "plugin_drtp.py"
GRID = REPO / "examples" / "drtp.yaml"
CLASSES = 3
Grads = list[tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def drtp_cls() -> Iterator[type[Rule]]:
    """The rule class, loaded as ``--plugin`` loads it; unregistered afterwards so no other test sees it."""
    before = set(sys.modules)
    load_plugins([str(PLUGIN)])
    yield RULES.get("drtp").impl
    RULES.unregister("drtp")
    discover._plugins.remove(str(PLUGIN))
    for name in set(sys.modules) - before:
        if name.startswith("bioscale_plugin_"):
            del sys.modules[name]


def make_net(hidden: list[int], seed: int = 0) -> LayeredNet:
    torch.manual_seed(seed)
    return build_fc(FCParams(hidden=hidden), DataShape("mnist", (1, 4, 4), CLASSES, 1, 1))


def prepared(cls: type[Rule], net: LayeredNet) -> Rule:
    rule = cls(BackwardParams(), OptimSpec(name="sgd", lr=0.1))
    rule.prepare(net)
    rule.setup(torch.device("cpu"))
    return rule


def batch(n: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES  # every class present, so every row of B_l is exercised
    return torch.rand(n, 1, 4, 4, generator=g), y[torch.randperm(n, generator=g)]


def rule_grads(rule: Rule, x: torch.Tensor, y: torch.Tensor) -> Grads:
    rule.model.zero_grad(set_to_none=True)
    rule.rule_backward(x, y)
    return [(layer.op.weight.grad.clone(), layer.op.bias.grad.clone()) for layer in rule.model.layers]


def expected_drtp(net: LayeredNet, x: torch.Tensor, y: torch.Tensor) -> Grads:
    """The formulas in the module docstring, with plain tensor algebra (no autograd)."""
    with torch.no_grad():
        ops = [layer.op for layer in net.layers]
        hs = [x.flatten(1)]
        for i, op in enumerate(ops):
            a = hs[-1] @ op.weight.T + op.bias
            hs.append(a if i == len(ops) - 1 else torch.tanh(a))
        onehot = F.one_hot(y, CLASSES).to(x.dtype)
        n = len(y)
        e = (torch.softmax(hs[-1], 1) - onehot) / n
        deltas = [(onehot / n) @ layer.direct_feedback.matrix * (1 - h**2)
                  for layer, h in zip(net.layers[:-1], hs[1:-1], strict=True)]
        deltas.append(e)
        return [(d.T @ h, d.sum(0)) for d, h in zip(deltas, hs[:-1], strict=True)]


def autograd_grads(net: LayeredNet, x: torch.Tensor, y: torch.Tensor) -> Grads:
    net = copy.deepcopy(net)
    F.cross_entropy(net(x), y).backward()
    return [(layer.op.weight.grad, layer.op.bias.grad) for layer in net.layers]


def assert_grads(got: Grads, expected: Grads) -> None:
    for (gw, gb), (ew, eb) in zip(got, expected, strict=True):
        torch.testing.assert_close(gw, ew, rtol=0, atol=1e-12)
        torch.testing.assert_close(gb, eb, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------- the backward signal


@pytest.mark.usefixtures("float64")
def test_drtp_hidden_layers_get_the_projected_target_and_the_output_its_true_gradient(drtp_cls: type[Rule]) -> None:
    assert issubclass(drtp_cls, DFA) and RULES.get("drtp").needs_layered
    rule = prepared(drtp_cls, make_net([7, 5]))
    net = rule.model
    assert [tuple(layer.direct_feedback.matrix.shape) for layer in net.layers[:-1]] == [(CLASSES, 7), (CLASSES, 5)]
    x, y = batch()
    got = rule_grads(rule, x, y)
    assert_grads(got, expected_drtp(net, x, y))

    # the output layer: backprop's gradient; the hidden layers: neither backprop's nor DFA's (same B_l)
    bp = autograd_grads(net, x, y)
    torch.testing.assert_close(got[-1][0], bp[-1][0], rtol=0, atol=1e-12)
    dfa = prepared(DFA, make_net([7, 5]))
    for layer, ours in zip(dfa.model.layers[:-1], net.layers[:-1], strict=True):
        layer.direct_feedback.matrix.copy_(ours.direct_feedback.matrix)
    dfa_got = rule_grads(dfa, x, y)
    for i in range(len(net.layers) - 1):
        assert not torch.allclose(got[i][0], bp[i][0])
        assert not torch.allclose(got[i][0], dfa_got[i][0])
    torch.testing.assert_close(dfa_got[-1][0], got[-1][0], rtol=0, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_drtp_hidden_gradients_do_not_depend_on_the_output(drtp_cls: type[Rule]) -> None:
    """No error reaches the hidden layers: a different output layer leaves their gradients unchanged."""
    rule = prepared(drtp_cls, make_net([7, 5]))
    x, y = batch()
    before = rule_grads(rule, x, y)
    with torch.no_grad():
        out = rule.model.layers[-1].op
        out.weight.normal_(0.0, 3.0)
        out.bias.uniform_(-2.0, 2.0)
    after = rule_grads(rule, x, y)
    assert_grads(after[:-1], before[:-1])
    assert not torch.allclose(after[-1][0], before[-1][0])  # while the output layer's own gradient changes


@pytest.mark.parametrize("arch", ["fc", "lc", "conv"])
def test_drtp_takes_a_finite_step_in_the_default_dtype_on_every_layered_arch(drtp_cls: type[Rule],
                                                                              arch: str) -> None:
    """The signal follows e's dtype (float32 here) and is reshaped to conv/LC outputs: every parameter moves."""
    torch.manual_seed(0)
    shape = DataShape("mnist", (1, 8, 8), CLASSES, 1, 1)
    rule = prepared(drtp_cls, build_model(ArchSpec(name=arch), shape))
    before = [p.detach().clone() for p in rule.model.parameters()]
    x, y = torch.rand(6, *shape.input_shape), torch.arange(6) % CLASSES
    out = rule.train_step(x, y)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(not torch.equal(b, p) for b, p in zip(before, rule.model.parameters(), strict=True))
    assert rule.describe().startswith("direct random target projection to")


# ------------------------------------------------------------------------------------------ the command line


def bioscale(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "bioscale", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


def test_cli_needs_the_plugin_for_drtp_and_finds_it_with_it() -> None:
    grid = str(GRID.relative_to(REPO))
    without = bioscale("grid", "validate", grid)
    assert without.returncode == 2, without.stderr
    assert "Unknown rule 'drtp'" in without.stderr and "Traceback" not in without.stderr

    plugin = str(PLUGIN.relative_to(REPO))
    valid = bioscale("--plugin", plugin, "grid", "validate", grid)
    assert valid.returncode == 0, valid.stderr
    assert "valid, 4 jobs" in valid.stdout

    listed = bioscale("--plugin", plugin, "list", "rules")
    assert listed.returncode == 0, listed.stderr
    assert "drtp" in listed.stdout and "Frenkel" in listed.stdout

    missing = bioscale("--plugin", "does/not/exist.py", "grid", "validate", grid)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "does/not/exist.py" in missing.stderr and "no such file" in missing.stderr
    assert "\n\n" not in missing.stderr.strip()  # one paragraph


def done_results(results: Path) -> dict[str, JobResult]:
    found = [JobResult.model_validate_json(p.read_text()) for p in (results / "drtp").glob("*/result.json")]
    return {r.job_id: r for r in found}


@pytest.mark.parametrize("executor", [[], ["--executor", "local", "--workers", "2"]], ids=["inline", "local"])
def test_cli_runs_the_example_grid_with_the_plugin(tmp_path: Path, executor: list[str]) -> None:
    """The example grid runs end to end (about 5 s a run on 2 cores, so not marked slow); with ``local`` the
    worker processes must load the plugin too."""
    results = tmp_path / "results"
    proc = bioscale("--plugin", str(PLUGIN.relative_to(REPO)), "run", str(GRID.relative_to(REPO)),
                    "--results", str(results), "--set", "train.epochs=1", "--set", "dataset.params.subset=500",
                    *executor, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "finished: 4 done" in proc.stderr, proc.stderr
    done = done_results(results)
    assert len(done) == 4 and all(r.status == "done" and r.epochs == 1 for r in done.values())
    setups = sorted(r.rule_setup or "" for r in done.values())
    assert sum("direct random target projection" in s for s in setups) == 2  # the plugin's rule ran, twice
