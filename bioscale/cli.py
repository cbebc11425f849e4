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
from bioscale.store import DEFAULT_RESULTS

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from bioscale.job import Job
    from bioscale.runner import Plan, RunSummary
    from bioscale.select import Selection
    from bioscale.slurm import SlurmExecutor
    from bioscale.spec import ExecutorSpec, GridSpec
    from bioscale.store import Store

HELP = {"help_option_names": ["-h", "--help"]}
# add_completion: typer's --install-completion / --show-completion (bash, zsh, fish, PowerShell), see README.
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False, context_settings=HELP,
                  help="Reproduce and extend benchmarks of biologically-motivated learning rules.")
grid_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="Check and inspect grid files.")
app.add_typer(grid_app, name="grid")
arch_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="Inspect architectures.")
app.add_typer(arch_app, name="arch")
err = Console(stderr=True)
out = Console()

ResultsOpt = Annotated[Path, typer.Option("--results", help="Results directory (default: runs/; the results "
                                                             "shipped with bioscale are in results/).")]
WhereOpt = Annotated[list[str] | None, typer.Option(
    "--where", metavar="KEY=VALUE",
    help="Only jobs whose KEY (a dotted path, like the grid's axes) has this VALUE, e.g. --where rule.name=fa "
         "--where seed=0; repeatable: all must hold.")]
OnlyOpt = Annotated[list[str] | None, typer.Option(
    "--only", metavar="SEL",
    help="Only this job: a job id, a unique id prefix, or a piece of its label like 'dtp/alt lc'; "
         "repeatable: any may match.")]
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


class Select(str, Enum):
    best = "best"


class SelectBy(str, Enum):
    """Validation metrics only: a selection never looks at the test set."""

    val_error = "val_error"
    val_loss = "val_loss"


class Listing(str, Enum):
    rules = "rules"
    archs = "archs"
    datasets = "datasets"


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    import bioscale

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    out.print(f"bioscale {bioscale.__version__} (torch {torch}, Python {sys.version.split()[0]})", highlight=False)
    raise typer.Exit()


@app.callback()
def _options(plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", metavar="PATH_OR_MODULE",
        help="Import a module (dotted name or .py file) that registers rules, archs or datasets, before the "
             "command runs (repeatable). Installed plugins (entry points `bioscale.plugins`) load by "
             "themselves.")] = None,
        version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                              help="Print the version of bioscale (and torch's) and exit.")] = False,
) -> None:
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
    results: ResultsOpt = DEFAULT_RESULTS,
    set_: SetOpt = None,
    max_jobs: MaxJobsOpt = None,
    where: WhereOpt = None,
    only: OnlyOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Rerun the finished (done, failed, diverged) jobs of the selection from scratch; their "
                        "files are kept aside as *.aside-N, never deleted. A job running elsewhere is never "
                        "forced.")] = False,
    executor: Annotated[str | None, typer.Option(
        help="inline (default), local (a process pool) or slurm (Slurm job arrays through submitit).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes for --executor local.")] = None,
    jobs_per_gpu: Annotated[int | None, typer.Option(
        help="Jobs run side by side on each GPU by --executor local (each worker pinned to its GPU).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per job (torch.set_num_threads).")] = None,
    stack: Annotated[int | None, typer.Option(
        min=1, help="Train up to N jobs that differ only in seed and numeric hyperparameters as one stacked "
                    "model, each recorded as if run alone; 1: each job alone. Default: 16 on a GPU, 1 on the CPU.")
    ] = None,
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", min=1, metavar="N",
        help="Run each job as N processes (one per GPU; gloo processes on the CPU) with torch.distributed, "
             "launched by torchrun: the same as --set train.distributed.nproc_per_node=N.")] = None,
    log: Annotated[list[str] | None, typer.Option(
        "--log", metavar="NAME", help="Also log every job to tensorboard or wandb (repeatable; adds to the "
        "grid's `logging:`; `none`: no logging this run).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    lease_timeout: Annotated[float, typer.Option(
        help="Seconds without a heartbeat after which another `bioscale run` (e.g. on another host sharing "
             "the results directory) may take a job over and resume it.")] = 120.0,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.", rich_help_panel=SLURM)] = None,
    gpus_per_job: Annotated[int | None, typer.Option(min=0, help="GPUs per job (--gpus-per-node).",
                                                     rich_help_panel=SLURM)] = None,
    cpus_per_task: Annotated[int | None, typer.Option(min=1, help="CPUs per job; also its torch threads.",
                                                      rich_help_panel=SLURM)] = None,
    mem: Annotated[str | None, typer.Option(help="Memory per job, e.g. 64G.", rich_help_panel=SLURM)] = None,
    time: Annotated[str | None, typer.Option(
        help="Time limit per run of a job, e.g. 24:00:00 or 2-00:00:00; a job that reaches it requeues itself "
             "and resumes.", rich_help_panel=SLURM)] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account.", rich_help_panel=SLURM)] = None,
    qos: Annotated[str | None, typer.Option(help="Slurm quality of service.", rich_help_panel=SLURM)] = None,
    sbatch: Annotated[list[str] | None, typer.Option(
        help="Extra sbatch option KEY=VALUE or flag KEY, e.g. --sbatch constraint=a100 (repeatable).",
        rich_help_panel=SLURM)] = None,
    slurm_array_parallelism: Annotated[int | None, typer.Option(
        min=1, help="Array tasks running at once.", rich_help_panel=SLURM)] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for the submitted jobs, showing their epochs; exit 1 if one failed.",
        rich_help_panel=SLURM)] = False,
) -> None:
    """Run every job of GRID that is not already done; an interrupted grid resumes where it stopped.

    Any number of runs may share a results directory: each job is claimed by the process that trains it.
    Ctrl-C or SIGTERM stops every job at once, keeps their finished epochs and exits 130 or 143.

    With --executor slurm the jobs go to Slurm as job arrays (one task per job) and the command returns once
    they are submitted (--wait: once they have ended); `bioscale status` follows them."""
    from bioscale.force import would_run
    from bioscale.logsinks import with_sinks
    from bioscale.preflight import preflight
    from bioscale.progress import Display
    from bioscale.runner import choose_executor, plan, run_plan

    slurm_sets = _slurm_sets(partition, gpus_per_job, cpus_per_task, mem, time, account, qos, sbatch or [])
    slurm_params = {k: v for k, v in (("array_parallelism", slurm_array_parallelism), ("wait", wait or None))
                    if v is not None}
    sets = [*(set_ or []), *([f"train.distributed.nproc_per_node={nproc_per_node}"] if nproc_per_node else [])]
    planned = plan(grid_file, results, _with_sets(sets, slurm_sets), max_jobs=max_jobs, where=where, only=only)
    planned = with_sinks(planned, log or [])
    choice = _executor_choice(planned.grid, executor, bool(slurm_sets or slurm_params), slurm_params)
    runner = choose_executor(planned.grid, choice, workers, threads, lease_timeout, jobs_per_gpu, stack)
    slurm = _slurm_executor(runner)
    checked = would_run(planned) if force else planned  # forced jobs are checked before anything is set aside
    if slurm is not None:
        slurm.check(checked.todo)  # time limits, GPUs for multi-process jobs: before anything is written
    # datasets, devices (not for jobs that run on Slurm's nodes), results folder: one grouped error (exit 2)
    preflight(checked, devices=getattr(runner, "runs_here", True), multi_node=getattr(runner, "multi_node", False))
    if force:
        planned = _force(planned, bool(where or only), lease_timeout)
    damaged = planned.damaged
    for job_id, problems in damaged[:10]:
        err.print(f"damaged: {job_id}: {'; '.join(problems)}. It runs again from its last consistent point "
                  "(damaged files are kept aside, never deleted).", markup=False, highlight=False, soft_wrap=True)
    if len(damaged) > 10:
        err.print(f"... and {len(damaged) - 10} more damaged jobs (`bioscale report` names them all).")
    running = planned.running_elsewhere
    elsewhere = f", {running} running elsewhere" if running else ""
    chosen = " selected" if where or only else ""
    finished = "already finished" + (" or stopped at a rung" if planned.grid.promote is not None else "")
    err.print(f"[bold]{escape(planned.grid.name)}[/]: {len(planned.jobs)} jobs{chosen}, {planned.skipped - running} "
              f"{finished}{elsewhere}, {len(planned.todo)} to run -> {escape(str(planned.results_dir))}")
    if not planned.todo:
        err.print(_nothing_to_run(planned), markup=False, highlight=False, soft_wrap=True)
    elif _shipped_has(planned.grid.name) and planned.results_dir.resolve() != _shipped_dir(planned.grid.name):
        err.print(f"(bioscale ships results of grid {planned.grid.name} in {_shipped_dir(planned.grid.name, False)}: "
                  "`bioscale report --results results`.)", markup=False, highlight=False, soft_wrap=True)
    show = bool(planned.todo) and not quiet and (slurm is None or slurm.waits)
    with Display(planned.runs or len(planned.todo), console=err, enabled=show) as display:
        summary = run_plan(planned, runner, on_event=display)
    if slurm is not None:
        _slurm_summary(slurm, summary, planned, grid_file, results)
        return
    if not summary.results:
        return
    names = {"running": "running elsewhere (left alone)"}
    if planned.grid.promote is not None:
        names["pending"] = "paused at a rung (not promoted, or waiting for their rung's other jobs)"
    err.print("finished: " + ", ".join(f"{n} {names.get(s, s)}" for s, n in summary.counts.items()) +
              f". See `bioscale report --results {escape(str(results))} --grid {escape(summary.grid)}`.",
              highlight=False)
    if summary.failed:  # a script or pipeline must see it; diverged is a result, not a failure
        err.print(f"{len(summary.failed)} job(s) failed: their errors are above and in the report. Fix the "
                  "cause and run the same command again: finished jobs are kept, failed ones are retried.")
        raise typer.Exit(1)


SLURM = "Slurm (--executor slurm)"


def _force(planned: Plan, selected: bool, lease_timeout: float) -> Plan:
    """Say how many finished jobs --force reruns (all of the grid's, without a selection), then set them aside."""
    from bioscale.force import finished_jobs, force_finished

    finished = finished_jobs(planned)
    if not finished:
        err.print("--force: no finished job to rerun" + (" in the selection." if selected else "."), highlight=False)
        return planned
    scope = (f"the {len(finished)} finished job(s) of the selection" if selected else
             f"ALL {len(finished)} finished jobs of grid {planned.grid.name} (no --where/--only: the whole grid)")
    err.print(f"--force: rerunning {scope} from scratch; their result, metrics and checkpoint are kept aside in "
              "each job's folder as *.aside-N (never deleted).", markup=False, highlight=False, soft_wrap=True)
    outcome = force_finished(planned, lease_timeout)
    if outcome.running:
        err.print(f"--force: {len(outcome.running)} of them started running in another process meanwhile: left "
                  "alone (a running job is never forced).", highlight=False, soft_wrap=True)
    return outcome.plan


def _shipped_dir(grid: str, resolve: bool = True) -> Path:
    from bioscale.store import SHIPPED_RESULTS

    path = SHIPPED_RESULTS / grid
    return path.resolve() if resolve else path


def _shipped_has(grid: str) -> bool:
    from bioscale.store import SHIPPED_RESULTS, Store

    return grid in Store(SHIPPED_RESULTS).grids()


def _nothing_to_run(planned: Plan) -> str:
    """One line when a run has nothing to do: why, and the two ways to run anyway."""
    from bioscale.store import SHIPPED_RESULTS

    running = planned.running_elsewhere
    finished = planned.skipped - running
    where = planned.results_dir
    if not finished:
        return f"nothing to run: all {running} job(s) are running in other processes ({where})."
    shipped = ""
    try:
        if where.resolve().is_relative_to(SHIPPED_RESULTS.resolve()):
            shipped = " (the results shipped with bioscale)"
    except OSError:
        pass
    busy = f", {running} running elsewhere" if running else ""
    return (f"nothing to run: {finished} job(s) already finished in {where}{shipped}{busy}; `--force` to rerun "
            f"them, `--results DIR` for a fresh store.")


def _slurm_sets(partition: str | None, gpus_per_job: int | None, cpus_per_task: int | None, mem: str | None,
                time: str | None, account: str | None, qos: str | None, sbatch: list[str]) -> dict[str, object]:
    from bioscale.slurm import cli_resources

    return cli_resources(partition, gpus_per_job, cpus_per_task, mem, time, account, qos, sbatch)


def _with_sets(items: list[str], extra: dict[str, object]) -> list[str] | dict[str, object]:
    """--set items, with the resource flags applied after them (as if they were the last --set)."""
    if not extra:
        return items
    from bioscale.gridfile import parse_set

    return {**parse_set(items), **extra}


def _executor_choice(grid: GridSpec, executor: str | None, slurm_flags: bool,
                     params: dict[str, object]) -> str | ExecutorSpec | None:
    """--executor, or the grid's; the Slurm flags go to the slurm executor's parameters (or are refused)."""
    from bioscale.spec import ExecutorSpec

    name = executor or (grid.executor.name if grid.executor else "inline")
    if name != "slurm":
        if slurm_flags:
            raise BioscaleError(f"--partition, --gpus-per-job, --cpus-per-task, --mem, --time, --account, --qos, "
                                f"--sbatch, --slurm-array-parallelism and --wait configure Slurm jobs, but this run "
                                f"uses the {name!r} executor. Add --executor slurm (or put `executor: {{name: "
                                f"slurm}}` in the grid), or drop those options.")
        return executor
    base = dict(grid.executor.params) if grid.executor is not None and grid.executor.name == "slurm" else {}
    return ExecutorSpec(name="slurm", params={**base, **params})


def _slurm_executor(runner: object) -> SlurmExecutor | None:
    if type(runner).__name__ != "SlurmExecutor":  # bioscale.slurm is imported only where it is used
        return None
    from bioscale.slurm import SlurmExecutor

    return runner if isinstance(runner, SlurmExecutor) else None


def _slurm_summary(slurm: SlurmExecutor, summary: RunSummary, planned: Plan, grid_file: Path, results: Path) -> None:
    """What was submitted and where the logs are; after --wait, the outcome and exit code 1 if a job failed
    or stopped without finishing."""
    for line in slurm.describe(planned.store):
        err.print(escape(line), highlight=False, soft_wrap=True)
    follow = f"bioscale status {planned.grid.name} --results {results}"
    if not slurm.waits:
        if summary.results:
            err.print(f"follow them with `{escape(follow)}`, or run the same command with --wait to wait for "
                      "them (nothing is submitted twice).", highlight=False, soft_wrap=True)
        return
    finished = [r for r in summary.results if r.status != "pending" or not (r.error or "").startswith("queued")]
    if finished:
        counts: dict[str, int] = {}
        for r in finished:
            counts[r.status] = counts.get(r.status, 0) + 1
        names = {"running": "running elsewhere (left alone)", "pending": "stopped before the end (resumable)"}
        err.print("finished: " + ", ".join(f"{n} {names.get(s, s)}" for s, n in sorted(counts.items())) +
                  f". See `bioscale report --results {escape(str(results))} --grid {escape(summary.grid)}`.",
                  highlight=False, soft_wrap=True)
    stopped = [r for r in finished if r.status == "pending"]
    if summary.failed or stopped:
        err.print(f"{len(summary.failed) + len(stopped)} job(s) did not finish: their errors are above, in "
                  f"`{escape(follow)}` and in their logs. Fix the cause and run the same command again: finished "
                  "jobs are kept, the others resume from their last epoch.", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


class StatusFormat(str, Enum):
    table = "table"
    json = "json"


@app.command()
def status(
    grid: Annotated[str | None, typer.Argument(
        help="A grid name under --results, or a grid YAML file (then jobs not submitted yet are listed too). "
             "Default: every grid.", metavar="[GRID]")] = None,
    results: ResultsOpt = DEFAULT_RESULTS,
    set_: SetOpt = None,
    where: WhereOpt = None,
    only: OnlyOpt = None,
    format_: Annotated[StatusFormat, typer.Option("--format", help="table or json.")] = StatusFormat.table,
    watch: Annotated[bool, typer.Option("--watch", help="Redraw the table every --interval seconds until "
                                                          "Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between redraws with --watch.")] = 5.0,
) -> None:
    """Where each job stands: queued (submitted to Slurm, not started), running (and who holds it), pending,
    done, failed or diverged; its epochs, the last and best test error (detection: AP), an ETA for a running
    job (its median epoch time x epochs left), its Slurm job id and the first line of its note."""

    from bioscale.grid import parse_set
    from bioscale.runner import expand_grid
    from bioscale.select import parse_selection, select_jobs
    from bioscale.status import status_json, status_rows, status_table, summary_line
    from bioscale.store import Store

    store = Store(results)
    selection = parse_selection(where, only)
    if grid is not None and (grid.endswith((".yaml", ".yml")) or Path(grid).is_file()):
        spec, jobs = expand_grid(Path(grid), set_ or [])
        chosen = select_jobs(jobs, selection, spec, parse_set(set_ or []))

        def read_rows() -> list[dict[str, object]]:
            return status_rows(store, jobs=chosen)
    else:
        if set_:
            raise BioscaleError("--set needs a grid file: `bioscale status grids/NAME.yaml --set ...`.")
        if grid is not None and grid not in store.grids():
            known = ", ".join(store.grids()) or "none"
            raise BioscaleError(f"No jobs of grid {grid!r} in {results}. Grids there: {known}. Give the grid file "
                                f"instead (`bioscale status grids/{grid}.yaml`) to list jobs not submitted yet.")
        ids = _store_selection(store, grid, selection) if selection else None

        def read_rows() -> list[dict[str, object]]:
            rows = status_rows(store, grid)
            return rows if ids is None else [r for r in rows if (r["grid"], r["job_id"]) in ids]
    rows = read_rows()
    if format_ is StatusFormat.json:
        sys.stdout.write(status_json(rows))
        return
    if watch:
        _watch(read_rows, interval)
        return
    out.print(status_table(rows))
    err.print(summary_line(rows), highlight=False)
    if not rows and results == DEFAULT_RESULTS:
        err.print(f"No jobs in {DEFAULT_RESULTS}/, where `bioscale run` writes by default.{_elsewhere()}",
                  markup=False, highlight=False, soft_wrap=True)


def _watch(read_rows: Callable[[], list[dict[str, object]]], interval: float) -> None:
    """Redraw the status table from the store every ``interval`` seconds; Ctrl-C stops watching (exit 0: it
    only reads, nothing runs here)."""
    import time

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from bioscale.status import status_table, summary_line

    def view() -> Group:
        rows = read_rows()
        stamp = time.strftime("%H:%M:%S")
        return Group(status_table(rows), Text(f"{summary_line(rows)}  (read {stamp}; Ctrl-C stops watching)"))

    try:
        with Live(view(), console=out, auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        return


def _store_selection(store: Store, grid: str | None, selection: Selection) -> set[tuple[str, str]]:
    """(grid, job id) of the recorded jobs a --where/--only selection picks (an error if none)."""
    from bioscale.select import check_keys, select, store_candidates

    candidates = store_candidates(store, grid)
    check_keys(selection, candidates)
    where = f"jobs of grid {grid}" if grid else f"jobs in {store.root}"
    return {(c.grid, c.job_id) for c in select(candidates, selection, where)}


def _select_frame(frame: pd.DataFrame, store: Store, grid: str | None, where: list[str] | None,
                  only: list[str] | None) -> pd.DataFrame:
    from bioscale.select import parse_selection

    selection = parse_selection(where, only)
    if not selection:
        return frame
    ids = _store_selection(store, grid, selection)
    keep = [(g, j) in ids for g, j in zip(frame["grid"], frame["job_id"], strict=True)]
    return frame[keep].reset_index(drop=True)


@app.command()
def report(
    results: Annotated[Path | None, typer.Option(
        "--results", help="Results directory (default: runs/, where `bioscale run` writes; the results shipped "
                          "with bioscale: --results results).", show_default=False)] = None,
    grid: Annotated[str | None, typer.Option(help="Only this grid (default: all).")] = None,
    where: WhereOpt = None,
    only: OnlyOpt = None,
    format_: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    layout: Annotated[Layout, typer.Option(
        help="settings: a row per setting (csv/json: a row per job); paper: methods x dataset/arch, "
             "like Bartunov et al.'s Table 1.")] = Layout.settings,
    plots: Annotated[Path | None, typer.Option(help="Also write PNG figures to this folder.")] = None,
    include_running: Annotated[bool, typer.Option(
        "--include-running", help="Put the partial epochs of running and interrupted jobs into means and "
                                  "curves (default: finished jobs only; the others are listed as such).")] = False,
    columns: Annotated[str | None, typer.Option(
        metavar="COLS", help="Columns of the settings table, comma-separated: e.g. rule,test_error,delta; "
                             "+train_error,-epochs (the default plus/minus these); all. csv/json: which "
                             "per-job columns.")] = None,
    caption: Annotated[str | None, typer.Option(
        help="LaTeX caption (used as given; default: what the cells mean and the papers' sources).")] = None,
    label: Annotated[str | None, typer.Option(help="LaTeX label (default: tab:GRID).")] = None,
    select: Annotated[Select | None, typer.Option(
        "--select", help="best: one row per cell (rule x arch x dataset) with the configuration a search selects, "
                         "its validation and test errors, the configurations tried and their spread, and the "
                         "selected hyperparameters next to Bartunov et al.'s Table 5; --plots adds test error "
                         "against each searched hyperparameter.")] = None,
    by: Annotated[SelectBy, typer.Option(
        "--by", help="What --select ranks by: a validation metric (dataset.params.validation); never the test "
                     "set.")] = SelectBy.val_error,
) -> None:
    """Tables of results next to the papers' numbers, and optionally figures.

    Every mean is over the seeds of one setting; running, pending and failed jobs are shown as such and
    left out of means (--include-running puts the partial epochs of running and interrupted ones in)."""
    from bioscale.report import render
    from bioscale.runner import load_results
    from bioscale.store import Store

    if results is None:
        results = _default_report_dir(grid)
    if results.exists() and not results.is_dir():
        raise BioscaleError(f"--results {results} is a file; it must be the results folder that `bioscale run` "
                            f"wrote (its default is ./{DEFAULT_RESULTS}), e.g. `bioscale report --results runs`.")
    frame = _select_frame(load_results(results, grid), Store(results), grid, where, only)
    width = out.width if output is None and sys.stdout.isatty() else None  # a terminal: wrap, never overflow
    if select is not None:
        from bioscale.report.select import render_selection, select_best
        from bioscale.report.sensitivity import sensitivity_plots
        from bioscale.store import Store

        if columns or include_running:
            raise BioscaleError("--columns and --include-running do not apply to --select (it shows finished "
                                "configurations, one row per cell); leave them out.")
        chosen = select_best(Store(results), grid, by.value)
        text = render_selection(chosen, format_.value, layout.value, caption=caption, label=label, width=width)
        for path in sensitivity_plots(chosen.configs, chosen.keys, plots) if plots is not None else []:
            err.print(f"wrote {escape(str(path))}", highlight=False)
        plots = None
    else:
        text = render(frame, format_.value, layout.value, include_running=include_running, columns=columns,
                      caption=caption, label=label, width=width)
    if plots is not None:
        from bioscale.report.frame import load_curves
        from bioscale.report.plots import write_plots

        curves = load_curves(Store(results), grid)
        curves = curves[curves["job_id"].isin(set(frame["job_id"]))] if len(curves) else curves
        for path in write_plots(frame, curves, plots, include_running=include_running):
            err.print(f"wrote {escape(str(path))}", highlight=False)
    if output is not None:
        from bioscale.store import atomic_write_text

        atomic_write_text(output, text)
        err.print(f"wrote {escape(str(output))}", highlight=False)
    else:
        sys.stdout.write(text)


@app.command()
def compare(
    results_a: Annotated[Path, typer.Argument(help="Results directory A.", metavar="RESULTS_A")],
    results_b: Annotated[Path, typer.Argument(help="Results directory B (may be A again, with --grid-b).",
                                              metavar="RESULTS_B")],
    grid: Annotated[str | None, typer.Option(
        metavar="NAME", help="The grid of A (and of B unless --grid-b); default: the only grid there.")] = None,
    grid_b: Annotated[str | None, typer.Option(
        "--grid-b", metavar="NAME", help="The grid of B, to compare two grids (e.g. two versions or two "
                                         "conventions), in one store or two.")] = None,
    where: WhereOpt = None,
    only: OnlyOpt = None,
    format_: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    include_running: Annotated[bool, typer.Option(
        "--include-running", help="Put the partial epochs of running and interrupted jobs into the means.")] = False,
) -> None:
    """Two results side by side: a row per setting (rule, arch, dataset and every setting that varies), each
    side's seeds as mean ± std, and B − A, for test and train error and epochs.

    Keys that differ between the sides but not within them (another learning rate, a new version's default)
    do not split rows: a note names them. Settings present on one side only are shown as such."""
    from bioscale.report.compare import Side, render_comparison
    from bioscale.report.compare import compare as compare_sides
    from bioscale.select import check_keys, parse_selection, select, store_candidates
    from bioscale.store import Store, load_rows

    stores = {"A": Store(results_a), "B": Store(results_b)}
    grid_a = _one_grid(stores["A"], grid, "RESULTS_A", "--grid")
    if grid_b is None and grid_a in stores["B"].grids():
        grid_b = grid_a
    grid_b = _one_grid(stores["B"], grid_b, "RESULTS_B", "--grid-b")
    names = {"A": grid_a, "B": grid_b}
    selection = parse_selection(where, only)
    chosen: set[tuple[str, str]] | None = None
    if selection:
        candidates = [c for s in "AB" for c in store_candidates(stores[s], names[s])]
        check_keys(selection, candidates)
        chosen = {(c.grid, c.job_id) for c in select(candidates, selection, "jobs of A and B")}
    sides = []
    for s in "AB":
        rows = [r for r in load_rows(stores[s], names[s]) if chosen is None or (r["grid"], r["job_id"]) in chosen]
        sides.append(Side(s, f"{stores[s].root} (grid {names[s]}, {len(rows)} jobs)", rows))
    width = out.width if output is None and sys.stdout.isatty() else None
    text = render_comparison(compare_sides(sides[0], sides[1], include_running), format_.value, width)
    if output is not None:
        from bioscale.store import atomic_write_text

        atomic_write_text(output, text)
        err.print(f"wrote {escape(str(output))}", highlight=False)
    else:
        sys.stdout.write(text)


def _one_grid(store: Store, grid: str | None, what: str, option: str) -> str:
    """``grid`` if ``store`` has it; else the store's only grid; else a message naming the grids there."""
    grids = store.grids()
    if grid is not None and grid in grids:
        return grid
    if grid is None and len(grids) == 1:
        return grids[0]
    there = ", ".join(grids) or "none"
    if grid is not None:
        raise BioscaleError(f"{what} ({store.root}) has no results of grid {grid!r}. Grids there: {there}.")
    if not grids:
        raise BioscaleError(f"{what} ({store.root}) holds no results: give the folder `bioscale run --results` "
                            "wrote.")
    raise BioscaleError(f"{what} ({store.root}) holds several grids ({there}): choose one with {option} NAME "
                        "(seeds of different grids are never averaged together).")


def _default_report_dir(grid: str | None) -> Path:
    """``bioscale report`` without --results: runs/, where `bioscale run` writes by default. Where runs/ has
    nothing to report, say where results are: stores inside runs/ (`make demo`'s runs/demo) and the results
    shipped with bioscale in results/."""
    from bioscale.store import Store

    store = Store(DEFAULT_RESULTS)
    if store.grids() if grid is None else grid in store.grids():
        return DEFAULT_RESULTS
    what = f"grid {grid!r}" if grid else "results"
    raise BioscaleError(f"No {what} in {DEFAULT_RESULTS}/, where `bioscale run` writes by default.{_elsewhere()} "
                        "Give the folder with --results DIR.")


def _elsewhere() -> str:
    """Where else results are: stores one level inside runs/ (runs/demo) and the shipped results/."""
    from bioscale.store import SHIPPED_RESULTS, Store

    nested = sorted(p for p in (DEFAULT_RESULTS.iterdir() if DEFAULT_RESULTS.is_dir() else [])
                    if p.is_dir() and Store(p).grids())
    text = "".join(f" {p}/ holds grid(s) {', '.join(Store(p).grids())}: `--results {p}`." for p in nested[:5])
    shipped = Store(SHIPPED_RESULTS).grids()
    if shipped:
        text += (f" The results shipped with bioscale ({', '.join(shipped)}) are in {SHIPPED_RESULTS}/: "
                 f"`--results {SHIPPED_RESULTS}`.")
    return text


@grid_app.command("validate")
def grid_validate(grid_file: Annotated[Path, typer.Argument(metavar="GRID")], set_: SetOpt = None,
                  max_jobs: MaxJobsOpt = None) -> None:
    """Check GRID: keys, types, names and rule x arch pairs, and a search's ranges. Nothing runs."""
    from bioscale.runner import expand_grid

    spec, jobs = expand_grid(grid_file, set_ or [], max_jobs=max_jobs)
    how = ""
    if spec.search is not None:
        cells = len({job.label.rsplit(" cfg=", 1)[0] for job in jobs})
        halving = f"; successive halving at epochs {spec.promote.rungs}" if spec.promote else ""
        how = (f" ({cells} combinations of the axes x {spec.search.n} search configurations, seed "
               f"{spec.search.seed}{halving})")
    out.print(f"{grid_file}: valid, {len(jobs)} jobs{how}.", markup=False, highlight=False)


@grid_app.command("expand")
def grid_expand(
    grid_file: Annotated[Path, typer.Argument(metavar="GRID")],
    set_: SetOpt = None,
    max_jobs: MaxJobsOpt = None,
    where: WhereOpt = None,
    only: OnlyOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the resolved jobs as JSON lines.")] = False,
) -> None:
    """List the jobs of GRID with their ids and labels (as JSON lines with --json)."""
    import json

    from bioscale.grid import parse_set
    from bioscale.runner import expand_grid
    from bioscale.select import parse_selection, select_jobs

    spec, jobs = expand_grid(grid_file, set_ or [], max_jobs=max_jobs)
    jobs = select_jobs(jobs, parse_selection(where, only), spec, parse_set(set_ or []))
    for job in jobs:
        if json_:
            sys.stdout.write(json.dumps({"job_id": job.job_id, "grid": job.grid,
                                         "spec": job.spec.model_dump(mode="json")}) + "\n")
        else:  # the label is what --only matches (with the id or a prefix of it)
            s = job.spec
            out.print(f"{job.job_id}  {job.label}  epochs={s.train.epochs}  lr={s.optim.lr:g}", markup=False,
                      highlight=False)


@arch_app.command("summary")
def arch_summary(
    name: Annotated[str, typer.Argument(help="Architecture name (`bioscale list archs`).")],
    dataset: Annotated[str, typer.Option(help="Dataset whose shape and classes the net is built for.")] = "mnist",
    batch_size: Annotated[int, typer.Option(help="Batch size for the memory estimate.")] = 128,
    param: Annotated[list[str] | None, typer.Option(
        help="Architecture parameter KEY=VALUE, e.g. --param hidden=[512,512] (repeatable).")] = None,
    rule: Annotated[str | None, typer.Option(
        help="Also trace this rule's own training step (its feedback, inverses and optimisers).")] = None,
    stack: Annotated[int, typer.Option(
        help="Also trace a stack of this many jobs of --rule (bp if not given), as `bioscale run --stack`.")] = 1,
    device: Annotated[str, typer.Option(
        help="Trace --rule/--stack on the code paths of this device: cuda (a GPU: a stack's batched LC layer "
             "and flat optimiser step) or cpu.")] = "cuda",
) -> None:
    """Layers, output shapes, parameter count and the memory one training step needs (computed, nothing
    is allocated: check before a run whether a net, or a stack of jobs, fits your GPU)."""
    from bioscale.models.summary import describe_arch

    out.print(describe_arch(name, dataset, batch_size, param or [], rule, stack, device), highlight=False)


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
        code = app(args=hoist_plugins(sys.argv[1:]), prog_name="bioscale", standalone_mode=False)
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
