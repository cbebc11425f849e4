import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from bioscale.report import FORMATS, load_frame, render
from bioscale.store import Store

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("fmt", ["markdown", "table", "latex", "html"])
def test_table_formats_match_golden_files(fixed_store: Store, fmt: str) -> None:
    text = render(load_frame(fixed_store), fmt)
    golden = GOLDEN / f"report.{fmt}.txt"
    if os.environ.get("BIOSCALE_UPDATE_GOLDEN"):  # regenerate on purpose, then review the diff
        golden.write_text(text)
    assert text == golden.read_text()


def test_seeds_aggregate_as_mean_and_std(fixed_store: Store) -> None:
    text = render(load_frame(fixed_store), "markdown")
    bp = next(line for line in text.splitlines() if line.startswith("| bp"))
    assert "2.60 ± 0.14" in bp  # best test errors 2.5 and 2.7, sample std
    assert "| 1.48" in bp and "+1.12" in bp  # the paper's number and ours minus the paper's


def test_failed_and_diverged_jobs_are_reported(fixed_store: Store) -> None:
    for fmt in ("markdown", "table"):
        text = render(load_frame(fixed_store), fmt)
        assert "diverged:" in text and "training loss is nan in epoch 2" in text
        assert "failed:" in text and "mnist-5k is missing" in text
        assert "1 pending" in text


def test_csv_and_json_have_one_row_per_job(fixed_store: Store) -> None:
    frame = load_frame(fixed_store)
    rows = json.loads(render(frame, "json"))
    assert len(rows) == 6 and rows[-1]["rule"] == "bp" and rows[-1]["paper_test_error"] == 1.48
    assert [r["rule"] for r in rows] == ["dtp", "sdtp", "fa", "dfa", "bp", "bp"]  # the papers' row order
    assert len(pd.read_csv(io.StringIO(render(frame, "csv")))) == 6


def test_every_format_renders_an_empty_store(tmp_path: Path) -> None:
    frame = load_frame(Store(tmp_path))
    for fmt in FORMATS:
        assert isinstance(render(frame, fmt), str)


def test_paper_layout_matches_golden_file(fixed_store: Store) -> None:
    text = render(load_frame(fixed_store), "markdown", layout="paper")
    golden = GOLDEN / "report.paper.markdown.txt"
    if os.environ.get("BIOSCALE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    # paper row order, the paper's number and the difference in each cell
    assert list(rows)[1:] == ["DTP, alternating", "SDTP, parallel", "FA", "DFA", "BP"]
    assert "2.60 ± 0.14 (1.48, +1.12)" in rows["BP"]
    assert "– (2.75)" in rows["DFA"]  # pending: the paper's number, nothing of ours yet


def test_paper_layout_uses_the_papers_columns_for_imagenet(tmp_path: Path) -> None:
    """Table 2 reports top-1 and top-5, no train error: so does the layout, also before any result."""
    from bioscale.grid import resolve

    store = Store(tmp_path)
    spec = resolve({"dataset": "imagenet", "arch": "lc", "rule": "fa"})
    store.job_dir("table2", spec.job_id()).write_spec("table2", spec)
    text = render(load_frame(store), "markdown", layout="paper")
    header = text.splitlines()[0]
    assert "imagenet LC test" in header and "imagenet LC top-5" in header and "train" not in header
    assert "– (93.08)" in text and "– (82.54)" in text
