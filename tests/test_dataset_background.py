"""Atlas jobs in the background: one at a time, the same question is the same job, stop keeps what was done,
a failure is a sentence, and a public link cannot stack more than MAX_WAITING jobs."""
from __future__ import annotations

import threading
import time

import pytest

from cnnviz.dataset import background
from cnnviz.dataset.job import AtlasReport, Progress
from cnnviz.errors import CnnvizError


def _report(complete: bool) -> AtlasReport:
    return AtlasReport("m", "w", "c", "d", ("layer",), 3, 3, (), 0.1, "local", complete)


def _wait(job, states=("done", "stopped", "failed"), timeout=10.0):
    deadline = time.monotonic() + timeout
    while job.state not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state in states, job.state


def test_the_same_question_is_the_same_job_and_jobs_run_one_at_a_time():
    jobs, gate, running = background.Jobs(), threading.Event(), []

    def run(progress, stop):
        running.append(threading.current_thread().name)
        progress(Progress(1, 2, 0.5))
        gate.wait(10)
        return _report(True)

    first = jobs.start(("a",), "first", run)
    assert jobs.start(("a",), "first", run) is first  # asked again while it runs: the same job
    second = jobs.start(("b",), "second", run)
    _wait(first, ("running",))
    assert second.state == "queued" and "queued" in second.describe()
    assert "1 of 2 images" in first.describe() and "images/s" in first.describe()
    gate.set()
    _wait(first)
    _wait(second)
    assert first.state == second.state == "done" and len(running) == 2 and "✅" in first.describe()
    assert jobs.get(first.id) is first


def test_stop_and_failures_say_so():
    jobs = background.Jobs()

    def until_stopped(progress, stop):
        while not stop():
            time.sleep(0.01)
        return _report(False)

    job = jobs.start(("s",), "stoppable", until_stopped)
    _wait(job, ("running",))
    jobs.stop(job.id)
    _wait(job)
    assert job.state == "stopped" and "resume" in job.describe()

    def broken(progress, stop):
        raise CnnvizError("The folder holds no images.")

    failed = jobs.start(("f",), "broken", broken)
    _wait(failed)
    assert failed.state == "failed" and "no images" in failed.describe()
    with pytest.raises(CnnvizError, match="No atlas job"):
        jobs.get("nope")


def test_a_public_link_cannot_stack_jobs(monkeypatch):
    monkeypatch.setattr(background, "MAX_WAITING", 2)
    jobs, gate = background.Jobs(), threading.Event()

    def run(progress, stop):
        gate.wait(10)
        return _report(True)

    held = [jobs.start((i,), f"job {i}", run) for i in range(2)]
    with pytest.raises(CnnvizError, match="at most 2"):
        jobs.start((9,), "one too many", run)
    gate.set()
    for job in held:
        _wait(job)
    assert jobs.start((9,), "now it fits", run).state in ("queued", "running", "done")
