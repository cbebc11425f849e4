"""Fuzzed grid files (issue 11, point 8): a few hundred seeded mutants of real grids, each through `bioscale grid
validate` and `bioscale run`. Every one ends in exit code 0 (a mutant that is still a valid grid) or 2 with a
one-paragraph message, never a traceback.

The mutants run in-process through ``bioscale.cli.main`` (the entry point, exception handling included) with
training stubbed out, so the few hundred take 15-25 s (marked slow); a handful also run as real processes,
and malformed ``--set`` values get the same treatment."""

from __future__ import annotations

import copy
import datetime
import random
import re
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bioscale import cli, runner

REPO = Path(__file__).resolve().parent.parent
SEED = 20240611
MUTANTS = 300

TINY = {
    "name": "fuzz",
    "description": "synthetic data, every grid key",
    "base": {
        "dataset": {"name": "synthetic", "params": {"train_size": 64, "test_size": 32, "shape": [1, 8, 8]}},
        "arch": {"name": "fc", "params": {"hidden": [16]}},
        "rule": "bp",
        "optim": {"name": "adam", "lr": 1.0e-3, "betas": [0.9, 0.999], "eps": 1.0e-8},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        "seed": 0,
    },
    "axes": {"rule.name": ["bp", "fa", "dtp"], "rule.params.schedule": ["parallel", "alternating"], "seed": [0, 1]},
    "exclude": [{"rule.name": "bp", "rule.params.schedule": "alternating"}],
    "overrides": [{"where": {"rule.name": "fa"}, "set": {"optim.lr": 1.0e-4, "train.epochs": 2}}],
    "executor": {"name": "inline", "params": {"threads": 1}},
}
CORPUS = [yaml.safe_dump(TINY, sort_keys=False)] + [
    (REPO / "grids" / name).read_text() for name in ("smoke.yaml", "table1-mnist5k.yaml", "table2.yaml",
                                                     "xiao2018.yaml")]

TOKENS = [
    ".nan", ".inf", "-.inf", "nan", "-1", "0", "1e400", "18446744073709551616", "4294967296", "~", "null", "{}",
    "[]", "true", "'x'", '"\\xff"', "2020-13-45", "2020-01-01", "!!binary xx", "!!python/object/apply:os.system [ls]",
    "!!set {a}", "&a [*a]", "*nope", "0x", "0o9", "1_000", "slurmm", "local", "cuda:9", "cuda", "mps", "cdua", "fx",
    "dtp", "kp", "resnet18", "coco", "imagenet", "mnist", "cifar10", "x" * 300, "[[[[[[", "{a: {b: {c: ", ": :",
    "- - -", "? [a]", "'unterminated", "\t", "%YAML 9.9", "---", "...", "@", "`", "!", "|", ">", "#", "=", "\\",
    "[" * 60 + "]" * 60, "[" * 2000, "{rule.nme: bp}", "{rule.params.shedule: x}", "[1, 2, 3]", "-0.0", "1e-320",
]
SNIPPETS = [
    "exclude:\n  - {rule.nme: bp}\n", "exclude:\n  - {}\n", "exclude:\n  - {rule.params.shedule: parallel}\n",
    "overrides:\n  - where: {optim.lrr: 1}\n    set: {optim.lr: 0.1}\n", "executor: slurmm\n",
    "executor: {name: local, params: {workers: -3}}\n", "executor: {name: local, params: {gpus: 2}}\n",
    "axes:\n  seed: [" + ", ".join(str(i) for i in range(120)) + "]\n  optim.lr: [" + ", ".join(["0.1"] * 100) + "]\n",
    "base: &b\n  x: *b\n", "name: ../../etc\n", "name: " + "n" * 200 + "\n", "seed: -5\n",
    "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e]\n",
]
WORD = re.compile(r"[A-Za-z0-9_.\-]+")
VALUES = [
    float("nan"), float("inf"), -float("inf"), -1, 0, 2**32, 2**64, 10**30, 1e300, -0.0, None, True, "", "x", {}, [],
    [1, "a", None], {"name": "fx"}, {"nme": "bp"}, "cuda:9", "cpu", "cdua", "slurmm", "local", "dtp", "kp", "ss",
    "alexnet", "retinanet", "lc", "coco", "imagenet", "cifar10", "digits", "parallel", "paralel", "sgd", "adamw",
    datetime.date(2020, 1, 1), b"\x00\xff", "x" * 500, [[[[[[[[[[0]]]]]]]]]], list(range(200)),
]
KEYS = ["rule.nme", "rule.params.shedule", "optim.lrr", "seed", "train.epochs", "dataset.params.root", "rule",
        "name", "params", "where", "set", "exclude", "axes", "base", "executor", "x", "", "rule.params.alpha",
        "train.device", "optim.betas", "arch.params.hidden", "dataset.params.download", "inverse_optim.lr"]


def mutate_tree(text: str, rng: random.Random) -> str:
    """Valid YAML with wrong contents: replace, delete, rename or add keys and values anywhere in the grid."""
    tree = yaml.safe_load(text)
    for _ in range(rng.randint(1, 3)):
        nodes = [tree]
        stack = [tree]
        while stack:
            node = stack.pop()
            children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
            for child in children:
                if isinstance(child, dict | list):
                    nodes.append(child)
                    stack.append(child)
        node = rng.choice(nodes)
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            op = rng.randrange(4)
            if op == 0:
                node[key] = copy.deepcopy(rng.choice(VALUES))
            elif op == 1:
                del node[key]
            elif op == 2 and len(key) > 2:
                k = rng.randrange(len(key) - 1)
                node[key[:k] + key[k + 1] + key[k] + key[k + 2:]] = node.pop(key)
            else:
                node[rng.choice(KEYS)] = copy.deepcopy(rng.choice(VALUES))
        elif isinstance(node, list) and node:
            i = rng.randrange(len(node))
            if rng.random() < 0.7:
                node[i] = copy.deepcopy(rng.choice(VALUES))
            else:
                node.append(copy.deepcopy(node[i]))
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def mutate(text: str, rng: random.Random) -> bytes:
    """Half the mutants are valid YAML with wrong contents (``mutate_tree``); then none to three random text
    edits: bytes, lines, scalars, keys, structure."""
    tree = rng.random() < 0.5
    if tree:
        text = mutate_tree(text, rng)
    data = text.encode()
    for _ in range(rng.randint(0 if tree else 1, 3 if not tree else 1)):
        op = rng.randrange(11)
        if op == 0 and data:  # flip a byte (often no longer UTF-8)
            i = rng.randrange(len(data))
            data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
        elif op == 1:  # insert random bytes
            i = rng.randrange(len(data) + 1)
            data = data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[i:]
        elif op == 2 and data:  # truncate
            data = data[: rng.randrange(len(data))]
        else:
            text = data.decode("utf-8", errors="replace")
            lines = text.splitlines(keepends=True) or [""]
            if op == 3:  # duplicate, delete or swap lines
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                choice = rng.randrange(3)
                if choice == 0:
                    lines.insert(i, lines[j])
                elif choice == 1:
                    del lines[i]
                else:
                    lines[i], lines[j] = lines[j], lines[i]
            elif op == 4:  # change a line's indentation
                i = rng.randrange(len(lines))
                lines[i] = " " * rng.choice([0, 1, 2, 3, 4, 8]) + lines[i].lstrip(" ")
            elif op in (5, 6, 7):  # replace a word (key or value) with a nasty token
                words = list(WORD.finditer(text))
                if words:
                    m = rng.choice(words)
                    text = text[: m.start()] + rng.choice(TOKENS) + text[m.end():]
                    lines = text.splitlines(keepends=True)
            elif op == 8:  # misspell a word: swap or drop a character
                words = [m for m in WORD.finditer(text) if len(m.group()) > 2]
                if words:
                    m = rng.choice(words)
                    w, k = m.group(), rng.randrange(len(m.group()) - 1)
                    w = w[:k] + w[k + 1] + w[k] + w[k + 2:] if rng.random() < 0.5 else w[:k] + w[k + 1:]
                    text = text[: m.start()] + w + text[m.end():]
                    lines = text.splitlines(keepends=True)
            elif op == 9:  # append a grid section with a known mistake
                lines.append(rng.choice(SNIPPETS))
            else:  # wrap a value in nesting
                words = list(WORD.finditer(text))
                if words:
                    m, depth = rng.choice(words), rng.choice([3, 45, 55, 1500])
                    text = text[: m.start()] + "[" * depth + m.group() + "]" * depth + text[m.end():]
                    lines = text.splitlines(keepends=True)
            data = "".join(lines).encode("utf-8", errors="surrogateescape")
    return data


def mutants() -> list[bytes]:
    rng = random.Random(SEED)
    return [mutate(rng.choice(CORPUS), rng) for _ in range(MUTANTS)]


def call_main(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """``bioscale ARGS`` in this process: (exit code, stderr + stdout). Exceptions other than SystemExit
    escape, as a traceback would."""
    monkeypatch.setattr(sys, "argv", ["bioscale", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> list:
    """``run_plan`` replaced: the run goes through validation, executor choice and preflight, trains nothing."""
    planned: list = []

    def fake_run_plan(plan, *args, **kwargs):
        planned.append(plan)
        return SimpleNamespace(results=[])

    monkeypatch.setattr(runner, "run_plan", fake_run_plan)
    return planned


@pytest.mark.slow  # 15-25 s on 2 cores
def test_fuzzed_grids_exit_0_or_2_never_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch, no_training: list) -> None:
    grid, results = tmp_path / "mutant.yaml", tmp_path / "results"
    codes: dict[int, int] = {}
    crashes: list[str] = []
    for i, data in enumerate(mutants()):
        grid.write_bytes(data)
        try:
            validate, said = call_main(["grid", "validate", str(grid)], capsys, monkeypatch)
            run, run_said = call_main(["run", str(grid), "--results", str(results), "-q"], capsys, monkeypatch)
        except Exception:
            crashes.append(f"mutant {i}: {data[:300]!r}\n{traceback.format_exc()}")
            continue
        codes[validate] = codes.get(validate, 0) + 1
        problem = f"mutant {i}: {data[:300]!r}\nvalidate -> {validate}: {said}\nrun -> {run}: {run_said}"
        assert validate in (0, 2) and run in (0, 2), problem
        assert "Traceback" not in said + run_said, problem
        if validate == 2:  # invalid: the same refusal from run, one paragraph naming the file
            assert run == 2 and said.startswith("error: ") and said.strip().count("\n") == 0, problem
            assert str(grid) in said or "--set" in said, problem
        elif run == 2:  # valid, but this machine cannot run it (no ImageNet here): preflight says why
            assert run_said.startswith("error: preflight found"), problem
    assert not crashes, f"{len(crashes)} of {MUTANTS} mutants crashed; the first:\n{crashes[0]}"
    assert codes.get(0, 0) >= MUTANTS // 10 and codes.get(2, 0) >= MUTANTS // 3, codes  # both kinds exercised


def test_fuzzed_grids_in_real_processes(tmp_path: Path) -> None:
    """A few mutants through the real command line: a fresh interpreter, its stderr, its exit code."""
    picked = mutants()[:: MUTANTS // 6][:6]
    for i, data in enumerate(picked):
        grid = tmp_path / f"mutant{i}.yaml"
        grid.write_bytes(data)
        proc = subprocess.run([sys.executable, "-m", "bioscale", "grid", "validate", str(grid)], capture_output=True,
                              text=True, cwd=REPO, timeout=120, errors="replace")
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, (data[:300], proc.stderr)


def test_fuzzed_set_values_exit_0_or_2_never_a_traceback(capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch, no_training: list) -> None:
    """`--set PATH=VALUE` with malformed paths and values (the issue: 7 of 20 printed tracebacks)."""
    rng = random.Random(SEED)
    keys = [*KEYS, "rule.name", "optim.lr", "optim.schedule.gamma", "dataset", "arch", "train", "a..b", ".x", "x.",
            "optim.betas.0", "seed.x", "rule.name.x", "dataset.params.shape"]
    items = ["epochs", "=", "=1", "seed=", "train.epochs==2", "optim.lr=1=2"]
    for _ in range(150):
        value = rng.choice(TOKENS) if rng.random() < 0.7 else yaml.safe_dump(rng.choice(VALUES)).strip()
        items.append(f"{rng.choice(keys)}={value}")
    for item in items:
        code, said = call_main(["grid", "validate", str(REPO / "grids" / "smoke.yaml"), "--set", item], capsys,
                               monkeypatch)
        assert code in (0, 2) and "Traceback" not in said, (item, said)
        if code == 2:
            assert said.startswith("error: ") and said.strip().count("\n") == 0, (item, said)
