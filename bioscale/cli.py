"""The ``bioscale`` command. Commands are thin: the work is in grid, executors, store and report."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bioscale.errors import BioscaleError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproduce and extend benchmarks of biologically-motivated learning rules.")
grid_app = typer.Typer(no_args_is_help=True, help="Check and inspect grid files.")
app.add_typer(grid_app, name="grid")
arch_app = typer.Typer(no_args_is_help=True, help="Inspect architectures.")
app.add_typer(arch_app, name="arch")
err = Console(stderr=True)
out = Console()

ResultsOpt = Annotated[Path, typer.Option("--results", help="Results directory.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field of every job, e.g. --set train.epochs=2 (repeatable).")]


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    latex = "latex"
    html = "html"
    json = "json"


class Layout(str, Enum):
    settings = "settings"
    paper = "paper"


class Listing(str, Enum):
    rules = "rules"
    archs = "archs"
    datasets = "datasets"


def _expand(grid_file: Path, sets: list[str] | None):  # type: ignore[no-untyped-def]
    from bioscale.grid import expand, load_grid, parse_set

    grid = load_grid(grid_file)
    return grid, expand(grid, parse_set(sets or []), source=str(grid_file))


@app.command()
def run(
    grid_file: Annotated[Path, typer.Argument(help="Grid YAML file.", metavar="GRID")],
    results: ResultsOpt = Path("results"),
    set_: SetOpt = None,
    executor: Annotated[str | None, typer.Option(help="inline (default) or local (a process pool).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes for --executor local.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per job (torch.set_num_threads).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Run every job of GRID that is not already done; an interrupted grid resumes where it stopped."""
    from bioscale.executors import make_executor
    from bioscale.progress import Display
    from bioscale.spec import ExecutorSpec
    from bioscale.store import Store

    grid, jobs = _expand(grid_file, set_)
    spec = grid.executor
    if executor is not None or workers is not None or threads is not None:
        name = executor or (spec.name if spec else ("local" if workers else "inline"))
        params = dict(spec.params) if spec and spec.name == name else {}
        params.update({k: v for k, v in (("workers", workers), ("threads", threads)) if v is not None})
        spec = ExecutorSpec(name=name, params=params)
    runner = make_executor(spec)
    store = Store(results)
    todo = []
    for job in jobs:
        jdir = store.job_dir(job.grid, job.job_id)
        jdir.write_spec(job.grid, job.spec)  # so the report shows it as pending
        if jdir.status() in ("pending", "failed"):
            todo.append(job)
    skipped = len(jobs) - len(todo)
    err.print(f"[bold]{grid.name}[/]: {len(jobs)} jobs, {skipped} already finished, {len(todo)} to run "
              f"-> {results / grid.name}")
    if not todo:
        return
    with Display(len(todo), console=err, enabled=not quiet) as display:
        done = runner.run(todo, store, display)
    counts: dict[str, int] = {}
    for r in done:
        counts[r.status] = counts.get(r.status, 0) + 1
    err.print("finished: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
              f". See `bioscale report --results {results} --grid {grid.name}`.")
    if counts.get("failed"):  # a script or pipeline must see it; diverged is a result, not a failure
        err.print(f"{counts['failed']} job(s) failed: their errors are above and in the report. Fix the "
                  "cause and run the same command again: finished jobs are kept, failed ones are retried.")
        raise typer.Exit(1)


@app.command()
def report(
    results: ResultsOpt = Path("results"),
    grid: Annotated[str | None, typer.Option(help="Only this grid (default: all).")] = None,
    format_: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    layout: Annotated[Layout, typer.Option(
        help="settings: a row per setting (csv/json: a row per job); paper: methods x dataset/arch, "
             "like Bartunov et al.'s Table 1.")] = Layout.settings,
    plots: Annotated[Path | None, typer.Option(help="Also write PNG figures to this folder.")] = None,
) -> None:
    """Tables of results next to the papers' numbers, and optionally figures."""
    from bioscale.report import load_frame, render
    from bioscale.store import Store

    store = Store(results)
    if grid is not None and grid not in store.grids():
        known = ", ".join(store.grids()) or "none"
        raise BioscaleError(f"No results for grid {grid!r} in {results}. Grids there: {known}. Run "
                            f"`bioscale run grids/{grid}.yaml --results {results}` first.")
    frame = load_frame(store, grid)
    text = render(frame, format_.value, layout.value)
    if plots is not None:
        from bioscale.report.frame import load_curves
        from bioscale.report.plots import write_plots

        for path in write_plots(frame, load_curves(store, grid), plots):
            err.print(f"wrote {path}")
    if output is not None:
        from bioscale.store import atomic_write_text

        atomic_write_text(output, text)
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@grid_app.command("validate")
def grid_validate(grid_file: Annotated[Path, typer.Argument(metavar="GRID")], set_: SetOpt = None) -> None:
    """Check GRID: keys, types, names and rule x arch pairs. Nothing runs."""
    _, jobs = _expand(grid_file, set_)
    out.print(f"{grid_file}: valid, {len(jobs)} jobs.")


@grid_app.command("expand")
def grid_expand(
    grid_file: Annotated[Path, typer.Argument(metavar="GRID")],
    set_: SetOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the resolved jobs as JSON lines.")] = False,
) -> None:
    """List the jobs of GRID with their ids (as JSON lines with --json)."""
    import json

    _, jobs = _expand(grid_file, set_)
    for job in jobs:
        if json_:
            sys.stdout.write(json.dumps({"job_id": job.job_id, "grid": job.grid,
                                         "spec": job.spec.model_dump(mode="json")}) + "\n")
        else:
            s = job.spec
            sched = s.rule.params.get("schedule")
            out.print(f"{job.job_id}  {s.rule.name}{'/' + sched if sched else ''}  {s.arch.name}  "
                      f"{s.dataset.name}  seed={s.seed}  epochs={s.train.epochs}  lr={s.optim.lr:g}")


@arch_app.command("summary")
def arch_summary(
    name: Annotated[str, typer.Argument(help="Architecture name (`bioscale list archs`).")],
    dataset: Annotated[str, typer.Option(help="Dataset whose shape and classes the net is built for.")] = "mnist",
    batch_size: Annotated[int, typer.Option(help="Batch size for the memory estimate.")] = 128,
    param: Annotated[list[str] | None, typer.Option(
        help="Architecture parameter KEY=VALUE, e.g. --param hidden=[512,512] (repeatable).")] = None,
) -> None:
    """Layers, output shapes, parameter count and the memory one training step needs (computed, nothing
    is allocated: check before a run whether a net fits your GPU)."""
    from bioscale.catalog import ARCHS, DATASETS
    from bioscale.data.base import DataInfo
    from bioscale.grid import parse_set
    from bioscale.models.summary import render, summarize
    from bioscale.registry import UnknownNameError
    from bioscale.spec import ArchSpec

    try:
        ARCHS.get(name)
        data = DATASETS.get(dataset)
    except UnknownNameError as exc:
        raise BioscaleError(str(exc)) from None
    info = DataInfo(data.family, data.input_shape, data.num_classes, 0, 0)
    spec = ArchSpec(name=name, params=parse_set(param or []))
    out.print(render(summarize(spec, info, batch_size)), highlight=False)


@app.command("list")
def list_(what: Annotated[Listing, typer.Argument(help="rules, archs or datasets.")]) -> None:
    """What can go in a grid, with a one-line summary and the parameters each takes."""
    from rich.table import Table

    from bioscale.catalog import ARCHS, DATASETS, RULES

    registry = {"rules": RULES, "archs": ARCHS, "datasets": DATASETS}[what.value]
    table = Table(header_style="bold")
    for col in ("name", "summary", "params"):
        table.add_column(col)
    for name, info in registry.items():
        params = ", ".join(f"{k}={f.default!r}" for k, f in info.params.model_fields.items())
        summary = info.summary
        if what == Listing.rules:
            summary += f" [{info.family}{', layered archs only' if info.needs_layered else ''}]"
        elif what == Listing.archs:
            summary += " [all rules]" if info.layered else " [backward rules except dfa]"
        table.add_row(name, summary, params)
    out.print(table)


def main() -> None:
    """Entry point: bad input is one paragraph on stderr and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code here instead of raising it
        if isinstance(code, int) and code:
            sys.exit(code)
    except BioscaleError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a results path that is a file, a full disk, no permission: say so plainly
        err.print(f"[bold red]error:[/] {exc.strerror or exc} ({exc.filename or ''}). Check the path and "
                  "its permissions, or give another one with --results/--output.", highlight=False,
                  soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted: finished epochs are saved; run the same command again to resume.")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # usage errors (unknown option, missing argument): click's own message and exit code, no traceback
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
