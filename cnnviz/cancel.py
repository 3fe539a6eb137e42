"""Cancellation: stopping a long pass (:func:`stop_when`, :class:`Stopped`; the pre-hooks that ask are in
:func:`cnnviz.hooks.interruptible`), and who still waits for an answer: the result streams that are open,
seen at the ASGI layer.

Gradio runs a queued call whether or not anyone reads its result: a client may ``POST
/gradio_api/call/<name>``, never open ``GET /gradio_api/call/<name>/<event_id>``, and hold a worker for an
hour; closing that stream does not stop the work either (Starlette cancels the stream's generator, and
Gradio marks the event dead only when it polls the connection between messages). So the server counts
the open streams itself, by the key each one names — the event id of ``/call/<name>/<event_id>``, the
session of ``/queue/data?session_hash=…`` (the page, ``gradio_client`` and MCP's loopback client) — and
a long pass asks :meth:`Listeners.unheard_for` at its stop checks (:mod:`cnnviz.hooks`).

No gradio here: this is plain ASGI, installed by the UI as a middleware.
"""
from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs

# --------------------------------------------------------------------------------------------------
# Stopping a pass: the request's check, asked before each module runs (cnnviz.hooks.interruptible)
# --------------------------------------------------------------------------------------------------

class Stopped(Exception):
    """Raised inside a forward pass when the :func:`stop_when` check says nobody waits for the answer."""


_STOP_CHECK: contextvars.ContextVar[Callable[[], str | None] | None] = contextvars.ContextVar("stop_check", default=None)
STOP_CHECK_EVERY_S = 0.02


@contextmanager
def stop_when(check: Callable[[], str | None]) -> Iterator[None]:
    """Within the block, forward passes started by this thread end with :class:`Stopped` as soon as
    ``check()`` returns a reason (it is asked before each module runs, at most every 20 ms)."""
    token = _STOP_CHECK.set(check)
    try:
        yield
    finally:
        _STOP_CHECK.reset(token)


def current_stop_check() -> Callable[[], str | None] | None:
    """This thread's (context's) stop check, set by :func:`stop_when`, or None."""
    return _STOP_CHECK.get()


_ON_PASS: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("on_pass", default=None)


@contextmanager
def on_each_pass(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``callback()`` is called as each forward pass that :func:`cnnviz.hooks.interruptible`
    watches starts in this thread (a progress count for long runs of passes, such as Score-CAM's)."""
    token = _ON_PASS.set(callback)
    try:
        yield
    finally:
        _ON_PASS.reset(token)


def count_passes(expected: int, progress: Callable[[int, int], None]):
    """:func:`on_each_pass` with a count: ``progress(done, total)`` as each watched pass starts, ``total`` the
    passes ``expected`` (or ``done``, when more come than expected)."""
    done = [0]

    def tick() -> None:
        done[0] += 1
        progress(done[0], max(expected, done[0]))

    return on_each_pass(tick)


def current_pass_counter() -> Callable[[], None] | None:
    """This thread's (context's) pass callback, set by :func:`on_each_pass`, or None."""
    return _ON_PASS.get()


UNHEARD_GRACE_S = 10.0  # a client may open its stream a moment after its call starts, or reconnect
_STREAM_PREFIXES = ("/gradio_api/call/", "/gradio_api/queue/data")


class Listeners:
    """Open result streams by key (event id or session hash), and when each key's last one closed."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._closed_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def opened(self, key: str) -> None:
        with self._lock:
            self._open[key] = self._open.get(key, 0) + 1
            self._closed_at.pop(key, None)

    def closed(self, key: str) -> None:
        with self._lock:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
                return
            self._open.pop(key, None)
            self._closed_at[key] = time.monotonic()
            if len(self._closed_at) > 10_000:  # forget the oldest closings: they only matter for seconds
                for old in sorted(self._closed_at, key=self._closed_at.get)[:5_000]:
                    del self._closed_at[old]

    def unheard_for(self, keys: tuple[str, ...], since: float) -> float:
        """Seconds for which no stream of ``keys`` has been open, counted from ``since`` (a
        ``time.monotonic()`` reading: when the work started) or from the last stream's closing when
        later; 0 while one is open.

        >>> listeners = Listeners(); listeners.opened("abc")
        >>> listeners.unheard_for(("abc", "session"), since=time.monotonic() - 60)
        0.0
        """
        with self._lock:
            if any(self._open.get(key) for key in keys):
                return 0.0
            start = max([since, *(self._closed_at[key] for key in keys if key in self._closed_at)])
        return max(0.0, time.monotonic() - start)


LISTENERS = Listeners()


def stream_key(path: str, query: bytes) -> str | None:
    """The key a result-stream request names, or None for any other request.

    >>> stream_key("/gradio_api/call/attribution/9f2c", b"")
    '9f2c'
    >>> stream_key("/gradio_api/queue/data", b"session_hash=s1")
    's1'
    >>> stream_key("/gradio_api/call/attribution", b"") is None
    True
    """
    if path.startswith("/gradio_api/queue/data"):
        values = parse_qs(query.decode("latin-1")).get("session_hash")
        return values[0] if values else None
    if path.startswith("/gradio_api/call/"):
        parts = path[len("/gradio_api/call/"):].strip("/").split("/")
        if parts and parts[0] == "v2":
            parts = parts[1:]
        return parts[1] if len(parts) == 2 and parts[1] else None
    return None


class StreamWatch:
    """ASGI middleware: count each result stream (a GET on a stream route) as open in ``listeners`` for
    as long as its response runs, whatever ends it (the answer, the client hanging up, a server stop)."""

    def __init__(self, app, listeners: Listeners = LISTENERS) -> None:
        self.app, self.listeners = app, listeners

    async def __call__(self, scope, receive, send):
        key = None
        if scope["type"] == "http" and scope.get("method") == "GET":
            path = scope.get("path", "")
            if path.startswith(_STREAM_PREFIXES):
                key = stream_key(path, scope.get("query_string", b""))
        if key is None:
            return await self.app(scope, receive, send)
        self.listeners.opened(key)
        try:
            await self.app(scope, receive, send)
        finally:
            self.listeners.closed(key)
