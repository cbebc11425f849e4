"""Events and their one built-in subscriber, the rich display: no training, no torch."""

import io
import pickle

from rich.console import Console

from bioscale.events import JobFinished, JobProgress, JobStarted
from bioscale.progress import Display


def test_events_cross_process_boundaries() -> None:
    for event in (JobStarted("abc", "rule.name=fa", 3), JobProgress("abc", "rule.name=fa", 1, 3, 2, 10, 0.5),
                  JobFinished("abc", "rule.name=fa", "failed", None, "ValueError: [boom]")):
        assert pickle.loads(pickle.dumps(event)) == event


def test_display_is_a_subscriber_and_prints_user_text_verbatim() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False)
    label = "arch.params.hidden=[fc], rule.name=[/fa]"  # rich would eat "[fc]" and choke on "[/fa]"
    with Display(2, console=console, enabled=True) as display:
        display(JobStarted("job1", label, 2))
        display(JobProgress("job1", label, 1, 2, 5, 10, 0.25))
        display(JobProgress("job1", label, 1, 2, 10, 10, None, 12.5))
        display(JobFinished("job1", label, "done", 12.5))
        display(JobProgress("job2", "seed=[x]", 1, 1, 1, 1, 0.5))  # never announced: still shown
        display(JobFinished("job2", "seed=[x]", "failed", None, "KeyError: [bold]missing[/bold] key\ntraceback"))
        display(object())  # not an event this display knows: ignored
    text = buf.getvalue()
    assert "job1: done, best test error 12.50%" in text
    assert "job2: failed, best test error -" in text
    assert "KeyError: [bold]missing[/bold] key" in text and "traceback" not in text
    assert display.progress.tasks[display.overall].completed == 2 and not display.running


def test_display_shows_running_jobs_with_their_labels() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=True)  # the live bar, as on a terminal
    label = "arch.params.hidden=[fc]"
    with Display(1, console=console) as display:
        display(JobStarted("job1", label, 2))
        display(JobProgress("job1", label, 1, 2, 5, 10, 0.25))
        task = display.progress.tasks[-1]
        assert task.completed == 0.5 and "loss 0.2500" in task.fields["info"]
        assert "[fc]" in console.render_str(task.description).plain


def test_the_summary_line_fits_80_columns_and_keeps_counts_and_eta() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True)
    label = "aosdtp/alt lc cifar10 s3 last_layer_bp=true lr=0.0003 batch_size=128 extra=knob"
    with Display(19, console=console) as display:
        for i in range(3):
            display(JobStarted(f"job{i}", label, 500))
            display(JobProgress(f"job{i}", label, 7, 500, 50, 100, 0.123456, 12.5))
        display(JobFinished("job0", label, "failed", None, "boom"))
        rendered = Console(width=80, force_terminal=True, record=True, file=io.StringIO())
        rendered.print(display.progress.get_renderable())
        text = rendered.export_text()
    first = text.splitlines()[0]
    assert first.startswith("jobs 1/19") and "2 running, 1 failed" in first
    assert ":" in first.split()[-1]  # the ETA, e.g. 0:12:01
    assert "epoch 7/500 loss 0.1235 err 12.50%" in text  # a running job's row keeps what matters
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_log_file_gets_a_line_per_epoch_at_a_sane_rate() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False)
    with Display(1, console=console, log_every_s=3600) as display:
        display(JobStarted("j", "fa fc mnist s0", 500))
        for epoch in range(1, 501):
            display(JobProgress("j", "fa fc mnist s0", epoch, 500, 10, 10, 0.5, 10.0))
        display(JobFinished("j", "fa fc mnist s0", "done", 9.5))
    lines = buf.getvalue().splitlines()
    epochs = [line for line in lines if "epoch " in line]
    assert [e.split("epoch ")[1].split()[0] for e in epochs] == ["1/500", "500/500"]  # first, last; rate-limited
    assert "started fa fc mnist s0 (j), 500 epochs" in lines[0]
    assert lines[-1] == "fa fc mnist s0 j: done, best test error 9.50% [1/1 jobs]"


def test_an_epoch_without_evaluation_still_gets_its_line() -> None:
    """With ``eval_every`` > 1 most epochs end without a test error: the log still gets their line (showing the
    last evaluated error), and the bar counts them as finished epochs, not as a step of the next one."""
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False)
    with Display(1, console=console, log_every_s=0) as display:
        display(JobStarted("j", "fa fc mnist s0", 4))
        display(JobProgress("j", "fa fc mnist s0", 1, 4, 10, 10, 0.5, 10.0, epoch_end=True))
        display(JobProgress("j", "fa fc mnist s0", 2, 4, 10, 10, 0.4, None))  # its last step: not the end
        assert display.fraction["j"] == 0.5
        display(JobProgress("j", "fa fc mnist s0", 2, 4, 10, 10, 0.4, None, epoch_end=True))
    epochs = [line for line in buf.getvalue().splitlines() if "epoch " in line]
    assert [e.split("epoch ")[1] for e in epochs] == ["1/4 loss 0.5000 err 10.00%", "2/4 loss 0.4000 err 10.00%"]
