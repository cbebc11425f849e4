"""``trace_step``: the memory of a rule's own step, one job or a stack, against what a real step measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bioscale.data.base import DataShape
from bioscale.errors import BioscaleError
from bioscale.models.step_memory import trace_step
from bioscale.models.summary import summarize
from bioscale.spec import ArchSpec

MNIST = DataShape("mnist", (1, 28, 28), 10, 1, 1)
CIFAR = DataShape("cifar10", (3, 32, 32), 10, 1, 1)


def test_one_bp_job_agrees_with_the_summary() -> None:
    """Two independent counts of one backprop step of the same net: the summary's (bare net, Adam's state
    added by formula) and the trace of the trainer's own build and steps."""
    s = summarize(ArchSpec(name="fc"), MNIST, 128)
    t = trace_step(ArchSpec(name="fc"), "mnist", MNIST, "bp", 128)
    assert t.held_bytes >= s.param_bytes
    assert abs(t.peak_bytes - s.peak_bytes) <= 0.10 * s.peak_bytes, (t.peak_bytes, s.peak_bytes)


@pytest.mark.parametrize("rule", ["fa", "ss", "dtp"])
def test_a_stack_holds_what_its_members_hold_alone(rule: str) -> None:
    """Once built, a stack of 4 holds exactly 4 jobs' tensors (its members' solo models are views of it, not
    copies; a copy would show as one more member's worth), and its step needs at least 4 jobs' steps."""
    solo = trace_step(ArchSpec(name="fc"), "mnist", MNIST, rule, 64)
    stack = trace_step(ArchSpec(name="fc"), "mnist", MNIST, rule, 64, members=4)
    params = summarize(ArchSpec(name="fc"), MNIST, 64).param_bytes
    assert stack.held_bytes >= 4 * params
    assert abs(stack.held_bytes - 4 * solo.held_bytes) <= 0.05 * params, (stack.held_bytes, solo.held_bytes)
    assert stack.step_bytes >= 4 * solo.step_bytes


def test_unstackable_jobs_and_bad_sizes_are_refused_in_words() -> None:
    with pytest.raises(BioscaleError, match="cannot be stacked: arch 'resnet18'"):
        trace_step(ArchSpec(name="resnet18"), "cifar10", CIFAR, "bp", 8, members=2)
    with pytest.raises(BioscaleError, match="at least one member"):
        trace_step(ArchSpec(name="fc"), "mnist", MNIST, "bp", 8, members=0)


@pytest.mark.parametrize("arch,rule,batch,members,paths", [
    ("fc", "dtp", 128, 4, "cpu"),  # a target rule: inverses, two optimisers, alternating phases
    ("lc", "fa", 32, 2, "cpu"),  # the stacked LC layer member by member, Adam fused member by member
    ("lc", "fa", 32, 2, "cuda"),  # a GPU's paths, taken on the CPU: the batched LC layer, the flat Adam step
])
def test_predicted_peak_of_a_stacked_step_is_within_10_percent_of_the_measured_peak_rss(
        arch: str, rule: str, batch: int, members: int, paths: str) -> None:
    """A stack of CIFAR jobs built on the CPU in a fresh process; peak RSS of two steps of every phase above
    the RSS once the stack and its batch exist, against the trace's step bytes (same protocol; see
    test_model_summary for why glibc is told to return freed blocks). ``cuda``: both take a GPU's paths, which
    is what the trace of a stack for a GPU (``bioscale.stack_fit``) predicts."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measures peak RSS through Linux's /proc/self/status")
    predicted = trace_step(ArchSpec(name=arch), "synthetic", CIFAR, rule, batch, members, paths).step_bytes
    script = Path(__file__).with_name("measure_step_memory.py")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), arch, "cifar10", "3", "32", "32", "10", str(batch), rule, "2",
                          str(members), paths], env=env, capture_output=True, text=True, check=True, timeout=600)
    measured = json.loads(out.stdout.strip().splitlines()[-1])["step_peak"]
    assert abs(predicted - measured) <= 0.10 * measured, (predicted / 2**20, measured / 2**20)
