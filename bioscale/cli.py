"""The ``bioscale`` command. Commands are thin: the work is in ``bioscale.runner`` (the Python API), the
executors, the store and the report."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bioscale.errors import BioscaleError
from bioscale.interrupts import Interrupted

if TYPE_CHECKING:
    from bioscale.job import Job

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
MaxJobsOpt = Annotated[int | None, typer.Option(
    "--max-jobs", min=1, metavar="N",
    help="Refuse grids whose axes make more than N combinations (default 10,000): raise it to run a "
         "grid that big on purpose.")]


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


@app.callback()
def _options(plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", metavar="PATH_OR_MODULE",
        help="Import a module (dotted name or .py file) that registers rules, archs or datasets, before the "
             "command runs (repeatable). Installed plugins (entry points `bioscale.plugins`) load by "
             "themselves.")] = None) -> None:
    """Reproduce and extend benchmarks of biologically-motivated learning rules."""
    if plugin:
        from bioscale.catalog import load_plugins

        load_plugins(plugin)


def _expand(grid_file: Path, sets: list[str] | None, max_jobs: int | None = None) -> list[Job]:
    from bioscale.runner import expand_grid

    return expand_grid(grid_file, sets or [], max_jobs=max_jobs)[1]


@app.command()
def run(
    grid_file: Annotated[Path, typer.Argument(help="Grid YAML file.", metavar="GRID")],
    results: ResultsOpt = Path("results"),
    set_: SetOpt = None,
    max_jobs: MaxJobsOpt = None,
    executor: Annotated[str | None, typer.Option(help="inline (default) or local (a process pool).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes for --executor local.")] = None,
    jobs_per_gpu: Annotated[int | None, typer.Option(
        help="Jobs run side by side on each GPU by --executor local (each worker pinned to its GPU).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per job (torch.set_num_threads).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    lease_timeout: Annotated[float, typer.Option(
        help="Seconds without a heartbeat after which another `bioscale run` (e.g. on another host sharing "
             "the results directory) may take a job over and resume it.")] = 120.0,
) -> None:
    """Run every job of GRID that is not already done; an interrupted grid resumes where it stopped.

    Any number of runs may share a results directory: each job is claimed by the process that trains it.
    Ctrl-C or SIGTERM stops every job at once, keeps their finished epochs and exits 130 or 143."""
    from bioscale.preflight import preflight
    from bioscale.progress import Display
    from bioscale.runner import choose_executor, plan, run_plan

    planned = plan(grid_file, results, set_ or [], max_jobs=max_jobs)
    runner = choose_executor(planned.grid, executor, workers, threads, lease_timeout, jobs_per_gpu)
    preflight(planned)  # datasets, devices, results folder: one grouped error (exit 2) before anything starts
    damaged = planned.store.damaged(planned.grid.name)
    for _, job_id, problems in damaged[:10]:
        err.print(f"damaged: {job_id}: {'; '.join(problems)}. It runs again from its last consistent point "
                  "(damaged files are kept aside, never deleted).", markup=False, highlight=False, soft_wrap=True)
    if len(damaged) > 10:
        err.print(f"... and {len(damaged) - 10} more damaged jobs (`bioscale report` names them all).")
    running = planned.running_elsewhere
    elsewhere = f", {running} running elsewhere" if running else ""
    err.print(f"[bold]{escape(planned.grid.name)}[/]: {len(planned.jobs)} jobs, {planned.skipped - running} "
              f"already finished{elsewhere}, {len(planned.todo)} to run -> {escape(str(planned.results_dir))}")
    with Display(len(planned.todo), console=err, enabled=bool(planned.todo) and not quiet) as display:
        summary = run_plan(planned, runner, on_event=display)
    if not summary.results:
        return
    names = {"running": "running elsewhere (left alone)"}
    err.print("finished: " + ", ".join(f"{n} {names.get(s, s)}" for s, n in summary.counts.items()) +
              f". See `bioscale report --results {escape(str(results))} --grid {escape(summary.grid)}`.",
              highlight=False)
    if summary.failed:  # a script or pipeline must see it; diverged is a result, not a failure
        err.print(f"{len(summary.failed)} job(s) failed: their errors are above and in the report. Fix the "
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
    from bioscale.report import render
    from bioscale.runner import load_results

    if results.exists() and not results.is_dir():
        raise BioscaleError(f"--results {results} is a file; it must be the results folder that `bioscale run` "
                            "wrote (its default is ./results), e.g. `bioscale report --results results`.")
    frame = load_results(results, grid)
    text = render(frame, format_.value, layout.value)
    if plots is not None:
        from bioscale.report.frame import load_curves
        from bioscale.report.plots import write_plots
        from bioscale.store import Store

        for path in write_plots(frame, load_curves(Store(results), grid), plots):
            err.print(f"wrote {escape(str(path))}", highlight=False)
    if output is not None:
        from bioscale.store import atomic_write_text

        atomic_write_text(output, text)
        err.print(f"wrote {escape(str(output))}", highlight=False)
    else:
        sys.stdout.write(text)


@grid_app.command("validate")
def grid_validate(grid_file: Annotated[Path, typer.Argument(metavar="GRID")], set_: SetOpt = None,
                  max_jobs: MaxJobsOpt = None) -> None:
    """Check GRID: keys, types, names and rule x arch pairs. Nothing runs."""
    jobs = _expand(grid_file, set_, max_jobs)
    out.print(f"{grid_file}: valid, {len(jobs)} jobs.", markup=False, highlight=False)


@grid_app.command("expand")
def grid_expand(
    grid_file: Annotated[Path, typer.Argument(metavar="GRID")],
    set_: SetOpt = None,
    max_jobs: MaxJobsOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the resolved jobs as JSON lines.")] = False,
) -> None:
    """List the jobs of GRID with their ids (as JSON lines with --json)."""
    import json

    jobs = _expand(grid_file, set_, max_jobs)
    for job in jobs:
        if json_:
            sys.stdout.write(json.dumps({"job_id": job.job_id, "grid": job.grid,
                                         "spec": job.spec.model_dump(mode="json")}) + "\n")
        else:
            s = job.spec
            sched = s.rule.params.get("schedule")
            out.print(f"{job.job_id}  {s.rule.name}{'/' + sched if sched else ''}  {s.arch.name}  "
                      f"{s.dataset.name}  seed={s.seed}  epochs={s.train.epochs}  lr={s.optim.lr:g}",
                      markup=False)


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
    from bioscale.models.summary import describe_arch

    out.print(describe_arch(name, dataset, batch_size, param or []), highlight=False)


@app.command("list")
def list_(what: Annotated[Listing, typer.Argument(help="rules, archs or datasets.")]) -> None:
    """What can go in a grid, with a one-line summary and the parameters each takes."""
    from bioscale.listing import list_table

    out.print(list_table(what.value))


def hoist_plugins(args: list[str]) -> list[str]:
    """Move every ``--plugin X`` / ``--plugin=X`` to the front, where the app's callback reads it, so that
    ``bioscale run GRID --plugin X`` works as well as ``bioscale --plugin X run GRID``."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--":
            rest += args[i:]
            break
        if args[i] == "--plugin" and i + 1 < len(args):
            front += args[i:i + 2]
            i += 2
            continue
        (front if args[i].startswith("--plugin=") else rest).append(args[i])
        i += 1
    return front + rest


def main() -> None:
    """Entry point: bad input is one paragraph on stderr and exit code 2, never a traceback."""
    try:
        # standalone_mode=False: click returns typer.Exit's code here instead of raising it
        code = app(args=hoist_plugins(sys.argv[1:]), standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except BioscaleError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a results path that is a file, a full disk, no permission: say so plainly
        what, where = escape(str(exc.strerror or exc)), escape(str(exc.filename or ""))
        err.print(f"[bold red]error:[/] {what} ({where}). Check the path and its permissions, or give another "
                  "one with --results/--output.", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as exc:  # raised by `run` once every job has stopped and saved
        err.print(exc.message or f"interrupted by {exc.name}.", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
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
