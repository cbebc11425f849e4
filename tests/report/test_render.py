import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from bioscale.errors import BioscaleError
from bioscale.grid import resolve
from bioscale.report import FORMATS, load_frame, render
from bioscale.report.render import LAYOUTS
from bioscale.spec import EpochMetrics, JobResult
from bioscale.store import Store

GOLDEN = Path(__file__).parent / "golden"
FLOAT_NOISE = re.compile(r"\d\.\d*(0000000|9999999)\d")


def _golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("BIOSCALE_UPDATE_GOLDEN"):  # regenerate on purpose, then review the diff
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_and_layout_matches_its_golden_file(fixed_store: Store, fmt: str, layout: str) -> None:
    text = render(load_frame(fixed_store), fmt, layout)
    _golden(f"report.{fmt}.txt" if layout == "settings" else f"report.paper.{fmt}.txt", text)


def _rows(text: str) -> dict[str, list[str]]:
    """Markdown rows by their first two cells."""
    rows = {}
    for line in text.splitlines()[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[f"{cells[0]} {cells[1]}".strip()] = cells
    return rows


def test_seeds_aggregate_as_mean_and_std(fixed_store: Store) -> None:
    rows = _rows(render(load_frame(fixed_store), "markdown"))
    bp = rows["bp"]
    assert "2.60 ± 0.14" in bp  # best test errors 2.5 and 2.7, sample std
    assert "1.48" in bp and "+1.12" in bp  # the paper's number and ours minus the paper's


def test_two_settings_of_one_cell_are_never_merged(fixed_store: Store) -> None:
    """fa with last_layer_bp false (4.0, 4.4) and true (2.0): two rows, the setting shown, never one mean
    (3.47 ± 1.29 over all three)."""
    frame = load_frame(fixed_store)
    rows = _rows(render(frame, "markdown"))
    assert "4.20 ± 0.28" in rows["fa last_layer_bp=false"] and "2 done" in rows["fa last_layer_bp=false"]
    assert "2.00" in rows["fa last_layer_bp=true"] and "1 done" in rows["fa last_layer_bp=true"]
    paper = _rows(render(frame, "markdown", "paper"))
    assert paper["FA last_layer_bp=false"][3] == "4.20 ± 0.28 (1.85, +2.35)"
    assert paper["FA last_layer_bp=true"][3] == "2.00 (1.85, +0.15) [n=1]"
    for layout in LAYOUTS:
        for fmt in ("markdown", "table", "latex", "html"):
            assert "3.47" not in render(frame, fmt, layout), (fmt, layout)
    numbers = json.loads(render(frame, "json", "paper"))
    fa = {r["setting"]: r for r in numbers if r["method"] == "FA"}
    assert fa["rule.params.last_layer_bp=false"]["mnist-5k FC test"] == 4.2
    assert fa["rule.params.last_layer_bp=true"]["mnist-5k FC test"] == 2.0


def test_two_grids_are_never_merged(fixed_store: Store) -> None:
    """The same job in two grids (two experiments): two rows, each with its grid."""
    spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": "bp", "seed": 0, "train": {"epochs": 1}})
    jdir = fixed_store.job_dir("other", spec.job_id())
    jdir.write_spec("other", spec)
    jdir.write_metrics([EpochMetrics(epoch=1, train_loss=1.0, train_error=20.0, test_error=30.0,
                                     epoch_time_s=1.0, lr=1e-3)])
    jdir.write_result(JobResult(job_id=spec.job_id(), grid="other", status="done", epochs=1))
    paper = render(load_frame(fixed_store), "markdown", "paper")
    assert paper.startswith("| grid ") and "| other " in paper and "30.00 (1.48, +28.52)" in paper
    assert "2.60 ± 0.14 (1.48, +1.12)" in paper
    assert "| other " in render(load_frame(fixed_store), "markdown")


def test_running_jobs_are_shown_and_left_out_of_means_unless_asked(fixed_store: Store) -> None:
    """bp seeds 0 and 1 are done (2.5, 2.7); seed 2 runs, at 9.5 after one epoch of three."""
    frame = load_frame(fixed_store)
    bp = _rows(render(frame, "markdown"))["bp"]
    assert "2.60 ± 0.14" in bp and "2 done, 1 running" in bp and bp[3] == "3"  # epochs behind the mean
    paper = _rows(render(frame, "markdown", "paper"))["BP"]
    assert paper[3] == "2.60 ± 0.14 (1.48, +1.12) [1 running]"
    assert "partial epochs of 1 running or interrupted job are left out" in render(frame, "markdown")
    numbers = {r["method"]: r for r in json.loads(render(frame, "json", "paper"))}
    assert numbers["BP"]["mnist-5k FC test"] == 2.6 and numbers["BP"]["mnist-5k FC seeds"] == 2

    included = render(frame, "markdown", include_running=True)
    assert "4.90 ± 3.98" in _rows(included)["bp"] and _rows(included)["bp"][3] == "1-3"  # (2.5 + 2.7 + 9.5) / 3
    assert "Means include the partial epochs of 1 running or interrupted job" in included
    paper = _rows(render(frame, "markdown", "paper", include_running=True))["BP"]
    assert paper[3] == "4.90 ± 3.98 (1.48, +3.42) [1 running]"
    numbers = {r["method"]: r for r in json.loads(render(frame, "json", "paper", include_running=True))}
    assert numbers["BP"]["mnist-5k FC seeds"] == 3
    # a failed job's partial numbers never go in
    assert "– (3.52) [1 failed]" in render(frame, "markdown", "paper", include_running=True)


def test_failed_and_diverged_jobs_are_reported(fixed_store: Store) -> None:
    for fmt in ("markdown", "table", "latex", "html"):
        for layout in LAYOUTS:
            text = render(load_frame(fixed_store), fmt, layout)
            assert "diverged:" in text and "training loss is nan in epoch 2" in text
            assert "failed:" in text and "mnist-5k is missing" in text
            assert "1 pending" in text


def test_csv_and_json_have_one_row_per_job(fixed_store: Store, fixed_jobs: list) -> None:
    frame = load_frame(fixed_store)
    rows = json.loads(render(frame, "json"))
    assert len(rows) == len(fixed_jobs) and rows[-1]["rule"] == "bp" and rows[-1]["paper_test_error"] == 1.48
    assert [r["rule"] for r in rows] == ["dtp", "sdtp", "fa", "fa", "fa", "dfa", "bp", "bp", "bp"]  # paper order
    assert len(pd.read_csv(io.StringIO(render(frame, "csv")))) == len(fixed_jobs)
    assert list(json.loads(render(frame, "json", columns="job_id,test_error"))[0]) == ["job_id", "test_error"]


def _noisy_store(tmp_path: Path) -> Store:
    """dtp parallel on fc: 9.3% against the paper's 2.86%, a difference of 6.440000000000001 in floats."""
    store = Store(tmp_path)
    spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": {"name": "dtp", "params": {"schedule": "parallel"}},
                    "train": {"epochs": 1}})
    jdir = store.job_dir("noisy", spec.job_id())
    jdir.write_spec("noisy", spec)
    jdir.write_metrics([EpochMetrics(epoch=1, train_loss=1.0, train_error=0.1 + 0.2, test_error=9.3,
                                     epoch_time_s=0.1 + 0.7, lr=1e-3)])
    jdir.write_result(JobResult(job_id=spec.job_id(), grid="noisy", status="done", epochs=1, wall_time_s=1.1 * 3))
    return store


@pytest.mark.parametrize("layout", LAYOUTS)
def test_machine_formats_carry_numbers_as_numbers_without_float_noise(tmp_path: Path, fixed_store: Store,
                                                                      layout: str) -> None:
    for store in (_noisy_store(tmp_path / "noisy"), fixed_store):
        frame = load_frame(store)
        csv_text, json_text = render(frame, "csv", layout), render(frame, "json", layout)
        assert not FLOAT_NOISE.search(csv_text) and not FLOAT_NOISE.search(json_text), (csv_text, json_text)
        rows = json.loads(json_text)
        for row in rows:
            for key, value in row.items():
                if key.endswith((" train", " test", " std", " paper", " delta", " seeds")) or key in (
                        "test_error", "train_error", "delta", "epochs", "seed", "paper_test_error"):
                    assert value is None or isinstance(value, (int, float)), (key, value)
        parsed = pd.read_csv(io.StringIO(csv_text))
        numeric = [c for c in parsed.columns if c.endswith((" test", " delta")) or c in ("test_error", "delta")]
        assert numeric and all(pd.api.types.is_numeric_dtype(parsed[c]) for c in numeric)
    frame = load_frame(_noisy_store(tmp_path / "again"))
    if layout == "settings":
        assert json.loads(render(frame, "json"))[0]["delta"] == 6.44
        assert ",6.44," in render(frame, "csv") and "6.440000000000001" not in render(frame, "csv")
    else:
        assert json.loads(render(frame, "json", "paper"))[0]["mnist-5k FC test delta"] == 6.44


def _wide_store(tmp_path: Path) -> Store:
    """Every Table 1 rule on the FC, LC and conv nets, two seeds, one rule with two settings."""
    store = Store(tmp_path)
    cells = [(rule, {"schedule": s} if s else {}) for rule in ("dtp", "sdtp", "aosdtp")
             for s in ("parallel", "alternating")] + [("fa", {"last_layer_bp": True}), ("fa", {}), ("dfa", {}),
                                                      ("bp", {})]
    for arch in ("fc", "lc", "conv"):
        for rule, params in cells if arch != "conv" else [("bp", {})]:
            for seed in (0, 1):
                spec = resolve({"dataset": "mnist-5k", "arch": arch, "rule": {"name": rule, "params": params},
                                "seed": seed, "train": {"epochs": 10}})
                jdir = store.job_dir("table1-mnist5k", spec.job_id())
                jdir.write_spec("table1-mnist5k", spec)
                epochs = 10 if seed == 0 else 4
                jdir.write_metrics([EpochMetrics(epoch=e + 1, train_loss=1.0, train_error=12.345 / (e + 1),
                                                 test_error=13.456 / (e + 1) + seed, epoch_time_s=1.0, lr=1e-3)
                                    for e in range(epochs)])
                status = "done" if seed == 0 else "running"
                jdir.write_result(JobResult(job_id=spec.job_id(), grid="table1-mnist5k", status=status,
                                            epochs=epochs))
    return store


def test_the_default_table_fits_100_columns(fixed_store: Store, tmp_path: Path) -> None:
    for store in (fixed_store, _wide_store(tmp_path)):
        for include_running in (False, True):
            text = render(load_frame(store), "table", include_running=include_running)
            assert max(len(line) for line in text.splitlines()) <= 100, text
            assert "err %" in text and "train\n" not in text and "train err" not in text  # DEFAULT_COLUMNS
    # a narrower terminal: the table wraps its text, it never overflows
    text = render(load_frame(fixed_store), "table", width=70)
    assert max(len(line) for line in text.splitlines()) <= 70


def test_columns_choose_what_the_settings_table_shows(fixed_store: Store) -> None:
    frame = load_frame(fixed_store)
    header = render(frame, "markdown", columns="+train_error,-epochs").splitlines()[0]
    assert "train err %" in header and "epochs" not in header and "test err %" in header
    header = render(frame, "markdown", columns="test_error,seeds").splitlines()[0]
    # the columns that tell rows apart come along where they vary: rule (with its schedule) and setting
    assert [h.strip() for h in header.strip("|").split("|")] == ["rule", "setting", "test err %", "seeds"]
    header = render(frame, "markdown", columns="all").splitlines()[0]
    assert "schedule" in header and "s/epoch" in header and "BioTorch" in header
    assert "| dtp " in render(frame, "markdown", columns="all")  # schedule shown: rule is the bare name
    with pytest.raises(BioscaleError, match=r"unknown column 'tst_error'\. Did you mean 'test_error'"):
        render(frame, "markdown", columns="tst_error")
    with pytest.raises(BioscaleError, match="paper layout has the paper's columns"):
        render(frame, "markdown", "paper", columns="test_error")


def test_latex_is_a_table_a_paper_can_include(fixed_store: Store) -> None:
    frame = load_frame(fixed_store)
    for layout in LAYOUTS:
        text = render(frame, "latex", layout)
        for part in (r"\begin{table}", r"\centering", r"\caption{", r"\label{tab:table1-mini", r"\toprule",
                     r"\midrule", r"\bottomrule", r"\end{tabular}", r"\end{table}"):
            assert part in text, (layout, part)
        assert "Bartunov et al. 2018" in text and "full MNIST, 500 epochs" in text  # the default caption
        assert r"last\_layer\_bp=false" in text and r"$\pm$" in text and "±" not in text
        assert "% failed: " in text  # problems stay out of the paper, as comments
    paper = render(frame, "latex", "paper", caption=r"Test errors (\%) on MNIST.", label="tab:mnist")
    assert r"\caption{Test errors (\%) on MNIST.}" in paper and r"\label{tab:mnist}" in paper
    assert r"\multicolumn{2}{c}{mnist-5k FC}" in paper and r"\cmidrule(lr){3-4}" in paper
    assert "method & setting & train & test" in paper
    assert "-{}-include-running" in render(frame, "latex")  # not an en dash


def test_every_format_renders_an_empty_store(tmp_path: Path) -> None:
    frame = load_frame(Store(tmp_path))
    for fmt in FORMATS:
        for layout in LAYOUTS:
            assert isinstance(render(frame, fmt, layout), str)


def test_paper_layout_rows_in_the_papers_order(fixed_store: Store) -> None:
    rows = _rows(render(load_frame(fixed_store), "markdown", layout="paper"))
    assert list(rows) == ["DTP, alternating", "SDTP, parallel", "FA last_layer_bp=false", "FA last_layer_bp=true",
                          "DFA last_layer_bp=false", "BP"]
    assert rows["DFA last_layer_bp=false"][3] == "– (2.75) [1 pending]"  # pending: the paper's number only
    assert rows["DTP, alternating"][3] == "60.00 (1.83, +58.17) [n=1, 1 diverged]"


def test_paper_layout_uses_the_papers_columns_for_imagenet(tmp_path: Path) -> None:
    """Table 2 reports top-1 and top-5, no train error: so does the layout, also before any result."""
    store = Store(tmp_path)
    spec = resolve({"dataset": "imagenet", "arch": "lc", "rule": "fa"})
    store.job_dir("table2", spec.job_id()).write_spec("table2", spec)
    text = render(load_frame(store), "markdown", layout="paper")
    header = text.splitlines()[0]
    assert "imagenet LC test" in header and "imagenet LC top-5" in header and "train" not in header
    assert "– (93.08)" in text and "– (82.54)" in text
    assert "full ImageNet, epochs not stated" in text
    assert "top-5 err %" in render(load_frame(store), "markdown").splitlines()[0]  # the default follows


def test_paper_layout_numbers_keep_counts_integers(tmp_path: Path) -> None:
    """BP ConvNet has no FC cell: its FC seeds are null, the others' stay integers (1, not 1.0)."""
    frame = load_frame(_wide_store(tmp_path))
    rows = {(r["method"], r["setting"]): r for r in json.loads(render(frame, "json", "paper"))}
    assert rows[("BP ConvNet", "")]["mnist-5k FC seeds"] is None
    assert rows[("BP", "")]["mnist-5k FC seeds"] == 1 and isinstance(rows[("BP", "")]["mnist-5k FC seeds"], int)
    assert ',1,"1 done, 1 pending"' in render(frame, "csv", "paper") and ",1.0," not in render(frame, "csv", "paper")


def test_a_paper_cell_never_stands_for_two_archs_or_schedules(tmp_path: Path) -> None:
    """dtp on the conv net, both schedules ("DTP ConvNet, parallel/alternating"); a plugin's arch that shares
    LC's column and row name with lc: separate rows, never one mean."""
    from bioscale.catalog import ARCHS, register_arch
    from bioscale.models.presets import LCParams

    register_arch("lc-twin", params=LCParams, display="LC twin", order=25, layered=True, column="LC",
                  summary="a plugin's arch in LC's column")(lambda params, shape: None)
    try:
        store = Store(tmp_path)
        jobs = [("conv", "dtp", "parallel", 5.0), ("conv", "dtp", "alternating", 7.0), ("lc", "bp", "", 3.0),
                ("lc-twin", "bp", "", 9.0)]
        for arch, rule, schedule, error in jobs:
            params = {"schedule": schedule} if schedule else {}
            spec = resolve({"dataset": "mnist-5k", "arch": arch, "rule": {"name": rule, "params": params},
                            "train": {"epochs": 1}})
            jdir = store.job_dir("g", spec.job_id())
            jdir.write_spec("g", spec)
            jdir.write_metrics([EpochMetrics(epoch=1, train_loss=1.0, train_error=1.0, test_error=error,
                                             epoch_time_s=1.0, lr=1e-3)])
            jdir.write_result(JobResult(job_id=spec.job_id(), grid="g", status="done", epochs=1))
        rows = _rows(render(load_frame(store), "markdown", "paper"))
        assert [r[0] for r in rows.values()] == ["DTP ConvNet, parallel", "DTP ConvNet, alternating", "BP (lc)",
                                                  "BP (lc-twin)"]
        assert [r[2] for r in rows.values()] == ["5.00", "7.00", "3.00 (1.17, +1.83)", "9.00"]
    finally:
        ARCHS.unregister("lc-twin")
