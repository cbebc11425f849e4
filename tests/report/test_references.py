"""The shipped paper numbers against the project's reproduction notes (shared/reference/papers.md)."""

import re
from pathlib import Path

import pytest

from bioscale.report.references import find_reference, load_references

NOTES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "papers.md"
ROWS = ["DTP, parallel", "DTP, alternating", "SDTP, parallel", "SDTP, alternating", "AO-SDTP, parallel",
        "AO-SDTP, alternating", "FA", "DFA", "BP", "BP ConvNet"]


def test_counts_and_sources() -> None:
    refs = load_references()
    table1 = [r for r in refs if r["table"].startswith("Table 1")]
    table2 = [r for r in refs if r["table"] == "Table 2"]
    # Table 1: 9 methods x {FC, LC} + BP ConvNet (LC column only), for MNIST and CIFAR-10; Table 2: 6 rows
    assert len(table1) == 2 * (9 * 2 + 1) and len(table2) == 6
    assert all(r["source"].startswith("Bartunov et al. 2018") for r in table1 + table2)
    assert all(r["source"] and r["role"] in ("primary", "secondary") for r in refs)


def test_spot_values() -> None:
    assert find_reference("mnist", "fc", "bp", "")["test_error"] == 1.48
    assert find_reference("mnist-5k", "lc", "dtp", "alternating")["test_error"] == 1.46
    assert find_reference("cifar10", "conv", "bp", "")["test_error"] == 31.87
    assert find_reference("imagenet", "lc", "fa", "")["top5_error"] == 82.54
    assert find_reference("digits", "fc", "bp", "") is None
    assert find_reference("imagenet", "fc", "bp", "") is None


def _markdown_rows(text: str, start: str) -> dict[str, list[str]]:
    block = text[text.index(start):]
    block = block[block.index("| Method |"):]
    rows = {}
    for line in block.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.skipif(not NOTES.exists(), reason="shared/reference/papers.md is not beside this checkout")
def test_every_number_matches_the_notes() -> None:
    text = NOTES.read_text()
    keys = {"DTP": "dtp", "SDTP": "sdtp", "AO-SDTP": "aosdtp", "FA": "fa", "DFA": "dfa", "BP": "bp"}
    for start, dataset in (("**(a) MNIST.**", "mnist"), ("**(b) CIFAR-10.**", "cifar10")):
        rows = _markdown_rows(text, start)
        assert list(rows) == ROWS
        for method, cells in rows.items():
            name, _, schedule = method.partition(", ")
            if method == "BP ConvNet":
                ref = find_reference(dataset, "conv", "bp", "")
                assert [ref["train_error"], ref["test_error"]] == [float(c) for c in cells[2:4]]
                continue
            for arch, (train, test) in (("fc", cells[0:2]), ("lc", cells[2:4])):
                ref = find_reference(dataset, arch, keys[name], schedule)
                assert (ref["train_error"], ref["test_error"]) == (float(train), float(test)), (dataset, method)
    rows = _markdown_rows(text, "### A.2 Table 2")
    names = {"DTP, parallel": ("lc", "dtp", "parallel"), "DTP, alternating": ("lc", "dtp", "alternating"),
             "SDTP, parallel": ("lc", "sdtp", "parallel"), "FA": ("lc", "fa", ""),
             "Backpropagation": ("lc", "bp", ""), "Backpropagation, ConvNet": ("conv", "bp", "")}
    assert set(rows) == set(names)
    for method, (arch, rule, schedule) in names.items():
        ref = find_reference("imagenet", arch, rule, schedule)
        assert (ref["test_error"], ref["top5_error"]) == tuple(float(re.sub(r"[^0-9.]", "", c))
                                                               for c in rows[method][:2])
