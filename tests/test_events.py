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
