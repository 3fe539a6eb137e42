"""Atlas jobs that outlive the request that started them (the page's button, ``/atlas`` over HTTP).

A job is named by what it computes (model, weights, collection, layers, k): asking again for the same one
returns the job already running or done, with its progress, instead of starting a second. Jobs run one at
a time in one worker thread (a pass uses every core already; a second would only halve both), in the order
asked; a stopped job keeps what it saved at its last checkpoint, and asking again resumes it.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import xxhash

from ..errors import CnnvizError
from .job import AtlasReport, Progress

KEEP_FINISHED = 200  # finished jobs remembered (their reports); the oldest are forgotten first
MAX_WAITING = int(os.environ.get("CNNVIZ_ATLAS_QUEUE", "4"))  # jobs queued or running: a public link cannot stack more


@dataclass
class AtlasJob:
    """One job and where it is. ``state``: "queued", "running", "done", "stopped" or "failed"."""

    id: str
    what: str  # e.g. "resnet18 (random) on faces: layer3, layer4, top 9"
    state: str = "queued"
    progress: Progress | None = None
    report: AtlasReport | None = None
    error: str = ""
    asked: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "stopped", "failed")

    def describe(self) -> str:
        """One line for the page and the API: what, where it is, how fast and how long is left."""
        if self.state == "queued":
            return f"⏳ {self.what}: queued behind another atlas job."
        if self.state == "running":
            p = self.progress
            if p is None or p.total == 0:
                return f"⏳ {self.what}: reading the collection…"
            left = f", about {p.left:.0f} s left" if p.left is not None else ""
            return f"⏳ {self.what}: {p.done:,} of {p.total:,} images ({p.rate:.1f} images/s{left})."
        if self.state == "failed":
            return f"⚠️ {self.what}: {self.error}"
        if self.state == "stopped":
            return f"⏹ {self.what}: stopped; what was done is kept (start it again to resume)."
        return f"✅ {self.what}: {self.report.describe() if self.report else 'done'}."


def job_id(*parts: object) -> str:
    return xxhash.xxh3_64_hexdigest("\x1f".join(map(str, parts)).encode())


class Jobs:
    """The server's atlas jobs (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: dict[str, AtlasJob] = {}
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas")

    def start(self, key: tuple, what: str, run: Callable[[Callable[[Progress], None], Callable[[], bool]], AtlasReport]) -> AtlasJob:
        """The job for ``key``: the one queued or running, else a new one that calls ``run(progress, stop)``."""
        ident = job_id(*key)
        with self._lock:
            found = self._jobs.get(ident)
            if found is not None and not found.finished:
                return found
            waiting = sum(not job.finished for job in self._jobs.values())
            if waiting >= MAX_WAITING:
                raise CnnvizError(f"The server already has {waiting} atlas jobs queued or running (at most {MAX_WAITING}); "
                                  "try again when one has finished.")
            job = AtlasJob(ident, what)
            self._jobs.pop(ident, None)
            self._jobs[ident] = job
            self._forget_old()
        self._worker.submit(self._run, job, run)
        return job

    def get(self, ident: str) -> AtlasJob:
        with self._lock:
            found = self._jobs.get(ident)
        if found is None:
            raise CnnvizError(f"No atlas job {ident[:40]!r} on this server (jobs are forgotten when it restarts; start it again).")
        return found

    def stop(self, ident: str) -> AtlasJob:
        """Ask a job to stop at its next batch (a queued one never starts)."""
        job = self.get(ident)
        job._stop.set()
        return job

    def _run(self, job: AtlasJob, run) -> None:
        if job._stop.is_set():
            job.state = "stopped"
            return
        job.state = "running"

        def progress(p: Progress) -> None:
            job.progress = p

        try:
            job.report = run(progress, job._stop.is_set)
            job.state = "done" if job.report.complete else "stopped"
        except CnnvizError as e:
            job.error, job.state = str(e), "failed"
        except Exception as e:  # a bug or a model that cannot run: the job says so, the server goes on  # noqa: BLE001
            job.error, job.state = f"the atlas failed ({type(e).__name__}: {str(e)[:200]}).", "failed"

    def _forget_old(self) -> None:
        finished = [ident for ident, job in self._jobs.items() if job.finished]
        for ident in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[ident]
