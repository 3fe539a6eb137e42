"""The server process: a private temp folder, a clean exit on signals, the disk quota of that folder,
the ASGI middlewares that hold request bodies and uploads to their limits, and freed memory given back
to the system when the server goes quiet.

No gradio here (``app.py`` calls these before it imports the UI): the temp folder must be chosen
before gradio is imported, because gradio reads ``GRADIO_TEMP_DIR`` at import time.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

_PRIVATE: Path | None = None


def private_temp_folder() -> Path:
    """A temp folder of this server's own, set as ``GRADIO_TEMP_DIR`` (uploads, Gradio's cache, our
    output files), created inside the folder ``GRADIO_TEMP_DIR`` named before (else the system's temp
    folder), so no other Gradio app on the host shares it. Made once per process; removed at exit
    (:func:`exit_cleanly`, or at interpreter exit when the app was started another way)."""
    global _PRIVATE
    if _PRIVATE is None:
        parent = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
        os.makedirs(parent, exist_ok=True)
        _PRIVATE = Path(tempfile.mkdtemp(prefix="cnnviz-", dir=parent))
        os.environ["GRADIO_TEMP_DIR"] = str(_PRIVATE)
        atexit.register(shutil.rmtree, _PRIVATE, ignore_errors=True)
    return _PRIVATE


def private_folder() -> Path | None:
    """The folder :func:`private_temp_folder` made, or None: only that one is ever cleaned or pruned."""
    return _PRIVATE


def exit_cleanly(folder: Path, close: Callable[[], None], grace_s: float = 3.0) -> None:
    """On SIGINT or SIGTERM: close the server (waiting at most ``grace_s``), remove ``folder``, exit 0.

    The exit skips interpreter teardown (``os._exit``): a forward pass still running in a worker
    thread would otherwise abort the process ("terminate called without an active exception")."""

    def stop(signum: int, _frame) -> None:
        print(f"{signal.Signals(signum).name}: stopping the server.", flush=True)
        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        closer.join(grace_s)
        shutil.rmtree(folder, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def wait_forever() -> None:
    """Keep the main thread alive (signals are handled there) while the server runs in its threads."""
    while True:
        time.sleep(3600)


# ------------------------------------------------------------------------------------- disk quota

def _megabytes(env: str, default: str) -> int:
    return int(float(os.environ.get(env, default)) * 2**20)


# Every file in the server's folder (uploads, results, Gradio's own copies), all visitors together.
DISK_QUOTA = _megabytes("CNNVIZ_DISK_QUOTA_MB", "1024")
# One visitor's uploads and results; 0 turns the share off. 512 MB holds two checkpoints at the 200 MB
# limit (re-uploading the same file reserves its size again before its bytes are known) and their results.
# A visitor is a client address (X-Forwarded-For counts only from FORWARDED_ALLOW_IPS). On a Hugging Face
# Space (SPACE_ID set) every visitor arrives from the proxy's address, so a per-address share would be one
# share for everyone: there the default is no share, only the total (an upload carries no session to count
# by instead). Set it there only when the proxy's address is in FORWARDED_ALLOW_IPS.
VISITOR_DISK_QUOTA = _megabytes("CNNVIZ_VISITOR_DISK_MB", "0" if os.environ.get("SPACE_ID") else "512")
EXPIRE_S = 3600.0  # files leave the folder by age only: Gradio's delete_cache=(3600, 3600), and DiskQuota.expire


class DiskFull(Exception):
    """A write :class:`DiskQuota` refused. ``str(e)`` is one sentence for the visitor; ``status`` the
    HTTP status an upload gets (507 Insufficient Storage)."""

    status = 507


@dataclass(eq=False)
class Reservation:
    """Bytes promised to one write before it happens. ``written``: how many of them are already in the
    folder (an upload's partial file), kept up to date by the writer; ``seen``: ``written`` as it was
    when the folder was last scanned (that scan counted those bytes)."""

    visitor: str | None
    size: int
    written: int = 0
    seen: int = 0


class DiskQuota:
    """The bytes in one folder, held to ``total`` and to ``per_visitor`` per visitor (0: no share).

    Every write reserves its size first (:meth:`reserve`, :meth:`grow`) and releases it when done
    (:meth:`release`, recording the files it made as the visitor's). A reservation that would take the
    folder past either limit raises :class:`DiskFull` with a sentence; nothing is ever deleted to make
    room. Files leave by age only (Gradio's ``delete_cache``; :meth:`expire` for our own outputs).

    In use = the folder as last scanned (the truth, whoever wrote it, whatever Gradio or a /tmp cleaner
    removed) + what released reservations may have written since + the part of each open reservation
    not yet written when the scan ran. A visitor's use = the files recorded as theirs (still there at
    the last scan) + their open reservations in full. The scan is redone when ``rescan_s`` old, and
    before a refusal when over ``recheck_s`` old, so a refusal does not rest on files long gone.
    Between scans only what Gradio writes by itself goes uncounted (its copies of files from outside
    the folder, ``data:`` URLs it decodes: each within a request's body limit). One lock, never held
    across an await; a scan runs under it (≈ 11 µs a file on 2 busy cores: 3 ms for 250 files).

    >>> import tempfile
    >>> quota = DiskQuota(tempfile.mkdtemp(), total=1000, per_visitor=600)
    >>> first = quota.reserve(500, "10.0.0.1")
    >>> quota.reserve(200, "10.0.0.1")
    Traceback (most recent call last):
    ...
    cnnviz.server.DiskFull: Your uploads and results take 500 B of the 600 B this server keeps per visitor, and this file needs 200 B more. ...
    >>> quota.release(first); quota.usage()
    0
    """

    def __init__(self, folder: str | os.PathLike, total: int, per_visitor: int = 0, expire_s: float = EXPIRE_S,
                 expiring: tuple[str, ...] = ("outputs",), rescan_s: float = 5.0, recheck_s: float = 0.25) -> None:
        self.folder, self.total, self.per_visitor = Path(os.path.realpath(folder)), total, per_visitor
        self.expire_s, self.expiring, self.rescan_s, self.recheck_s = expire_s, expiring, rescan_s, recheck_s
        self._lock = threading.Lock()
        self._open: list[Reservation] = []
        self._owned: dict[str, dict[str, int]] = {}  # visitor → {path: bytes} of the files recorded as theirs
        self._scanned_bytes = 0  # what the last scan found
        self._scanned_at = -math.inf
        self._since = 0  # bytes released reservations may have put in the folder since that scan
        self._expired_at = time.monotonic()

    def reserve(self, size: int, visitor: str | None = None, what: str = "file") -> Reservation:
        """Promise ``size`` bytes to a write by ``visitor`` (None: counted in the total only).

        Raises:
            DiskFull: the bytes would take the folder past the total, or the visitor past their share."""
        reservation = Reservation(visitor, 0)
        with self._lock:
            self._check(reservation, size, what)
            reservation.size = size
            self._open.append(reservation)
        return reservation

    def grow(self, reservation: Reservation, size: int, what: str = "upload") -> None:
        """Promise ``size`` more bytes to an open reservation (a body whose length was not declared).

        Raises:
            DiskFull: as :meth:`reserve`; the reservation stays as it was."""
        with self._lock:
            self._check(reservation, size, what)
            reservation.size += size

    def release(self, reservation: Reservation, paths: Iterable[str | os.PathLike] = ()) -> None:
        """Close a reservation. ``paths``: the files the write made, recorded as its visitor's; none
        (a write that failed): what it had written may still be in the folder, and counts until the
        next scan."""
        sizes = {}
        for path in paths:
            try:
                sizes[os.path.realpath(path)] = os.stat(path).st_size
            except OSError:  # gone already
                continue
        with self._lock:
            if reservation not in self._open:
                return
            self._open.remove(reservation)
            # the last scan counted ``seen`` bytes of this write already (an upload's partial file)
            self._since += max(0, (sum(sizes.values()) if sizes else reservation.written) - reservation.seen)
            if reservation.visitor is not None and sizes:
                self._owned.setdefault(reservation.visitor, {}).update(sizes)

    def usage(self, visitor: str | None = None) -> int:
        """Bytes in use after a fresh scan, open reservations included: everyone's, or one visitor's."""
        with self._lock:
            self._scan()
            return self._visitor_bytes(visitor) if visitor is not None else self._used()

    def expire(self) -> int:
        """Remove files under the ``expiring`` sub-folders older than ``expire_s`` (outputs Gradio never
        took over, e.g. written by a handler that failed afterwards) and their emptied folders; returns
        how many files went."""
        removed, cutoff = 0, time.time() - self.expire_s
        for name in self.expiring:
            base = str(self.folder / name)
            for root, _dirs, files in os.walk(base, topdown=False):  # each folder after its sub-folders
                emptied = False
                for file in files:
                    path = os.path.join(root, file)
                    try:
                        if os.lstat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
                            emptied = True
                    except OSError:  # gone meanwhile
                        continue
                try:  # a fresh empty folder may be about to get its file: only emptied or old ones go
                    if root != base and (emptied or os.lstat(root).st_mtime < cutoff):
                        os.rmdir(root)  # only when empty
                except OSError:
                    continue
        return removed

    # Under the lock from here on.

    def _check(self, reservation: Reservation, size: int, what: str) -> None:
        age = time.monotonic() - self._scanned_at
        if age > self.rescan_s:
            self._scan()
        try:
            self._within_limits(reservation, size, what)
        except DiskFull:
            if age <= self.rescan_s and time.monotonic() - self._scanned_at > self.recheck_s:
                self._scan()  # files may have gone since: refuse only on a fresh count
                self._within_limits(reservation, size, what)
            else:
                raise

    def _within_limits(self, reservation: Reservation, size: int, what: str) -> None:
        visitor = reservation.visitor
        if visitor is not None and self.per_visitor:
            mine = self._visitor_bytes(visitor)
            if size > self.per_visitor - mine:
                raise DiskFull(self._visitor_sentence(mine, size, what))
        used = self._used()
        if size > self.total - used:
            raise DiskFull(self._total_sentence(used, size, what))

    def _used(self) -> int:
        return self._scanned_bytes + self._since + sum(max(0, r.size - r.seen) for r in self._open)

    def _visitor_bytes(self, visitor: str) -> int:
        recorded = sum(self._owned.get(visitor, {}).values())
        return recorded + sum(r.size for r in self._open if r.visitor == visitor)

    def _scan(self) -> None:
        """Count every regular file under the folder (links are not followed); drop the visitors'
        records of files no longer there; and, once a minute, :meth:`expire`."""
        if time.monotonic() - self._expired_at > 60:
            self._expired_at = time.monotonic()
            self.expire()
        for r in self._open:  # before the scan: what is written meanwhile is then counted twice, never missed
            r.seen = r.written
        files: dict[str, int] = {}
        stack = [str(self.folder)]
        while stack:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                            elif entry.is_file(follow_symlinks=False):
                                files[entry.path] = entry.stat(follow_symlinks=False).st_size  # real: the folder is
                        except OSError:  # removed meanwhile
                            continue
            except OSError:
                continue
        self._scanned_bytes, self._since = sum(files.values()), 0
        self._scanned_at = time.monotonic()
        for visitor in list(self._owned):
            kept = {p: files[p] for p in self._owned[visitor] if p in files}
            if kept:
                self._owned[visitor] = kept
            else:
                del self._owned[visitor]

    def _total_sentence(self, used: int, size: int, what: str) -> str:
        if size > self.total:
            return f"This {_size(size)} {what} is larger than the {_size(self.total)} this server keeps on disk for everyone."
        return (f"The server's disk space for uploads and results is full: {_size(used)} of {_size(self.total)} "
                f"in use, and this {what} needs {_size(size)} more. {self._expiry()}; try again in a few minutes.")

    def _visitor_sentence(self, mine: int, size: int, what: str) -> str:
        if size > self.per_visitor:
            return f"This {_size(size)} {what} is larger than the {_size(self.per_visitor)} this server keeps per visitor."
        return (f"Your uploads and results take {_size(mine)} of the {_size(self.per_visitor)} this server keeps "
                f"per visitor, and this {what} needs {_size(size)} more. {self._expiry()}; try again later, "
                "or with fewer or smaller files.")

    def _expiry(self) -> str:
        minutes = round(self.expire_s / 60)
        return "Files are removed " + ("an hour" if minutes == 60 else f"{minutes} minutes") + " after they were made"


def _size(n: int) -> str:
    """Bytes for a sentence: ``1,024 MB``, ``2.5 MB``, ``300 B``."""
    if n < 2**20 // 10:
        return f"{n:,} B"
    return f"{n / 2**20:,.1f} MB" if n < 10 * 2**20 else f"{n / 2**20:,.0f} MB"


_QUOTAS: dict[str, DiskQuota] = {}
_QUOTAS_LOCK = threading.Lock()


def disk_quota(folder: str | os.PathLike | None = None, total: int = DISK_QUOTA,
               per_visitor: int = VISITOR_DISK_QUOTA) -> DiskQuota | None:
    """The one :class:`DiskQuota` of ``folder`` in this process (made on the first call, with that
    call's limits); ``folder`` None: this server's private folder, or None when there is none (the
    library in a notebook, unit tests: nothing is held then)."""
    folder = folder if folder is not None else private_folder()
    if folder is None:
        return None
    key = os.path.realpath(folder)
    with _QUOTAS_LOCK:
        if key not in _QUOTAS:
            _QUOTAS[key] = DiskQuota(key, total, per_visitor)
        return _QUOTAS[key]


# ------------------------------------------------------------------------------ request bodies (ASGI)

STALL_S = 60.0  # an upload that sends nothing for this long is cut off (it would hold its reservation)
_UNWRITTEN = 64 * 2**10  # at most this much of the chunks Gradio has parsed may still sit in its buffers


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (``upload_limit`` for uploads) with
    413 and one sentence: up front when the ``Content-Length`` says so, else by counting the bytes as
    they stream to the app (nothing is buffered here). A body longer than its ``Content-Length`` is cut
    off too: uvicorn already frames a body by its length, this holds behind any server."""

    def __init__(self, app, limit: int = 1 * 2**20, upload_limit: int = 25 * 2**20, upload_path: str = "/gradio_api/upload") -> None:
        self.app, self.limit, self.upload_limit, self.upload_path = app, limit, upload_limit, upload_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope.get("path", "").endswith(self.upload_path) else self.limit
        declared = declared_length(scope)
        if declared == -1 or (declared is not None and declared > limit):
            return await _plain(send, 413, _too_large(limit))

        async def check(seen: int, _chunk: int) -> tuple[int, str] | None:
            if declared is not None and seen > declared:
                return 413, LONGER_THAN_DECLARED
            return (413, _too_large(limit)) if seen > limit else None

        await _metered(self.app, scope, receive, send, check)


LONGER_THAN_DECLARED = "The request sent more bytes than its Content-Length header declared."


def _too_large(limit: int) -> str:
    return f"The request is larger than the {limit // 2**20} MB this server accepts."


class UploadGuard:
    """ASGI middleware for the upload route: no upload is written before its bytes are reserved on the
    disk ``quota``, and what cut-off uploads leave behind is removed.

    * A body with a ``Content-Length`` reserves that many bytes before the app reads any (refused at
      once with 507 and a sentence when it does not fit the visitor's share or the total); one without
      (chunked) reserves as its bytes arrive, ``step`` bytes ahead. Bytes are counted as they stream:
      more than declared is cut off (413), and so is an upload that sends nothing for ``stall_s``
      (408: it would hold its reservation). The reservation is released when the upload ends; the files
      of a finished upload (the paths Gradio answers) are recorded as the visitor's.
    * Gradio streams an upload into a temporary file at the top of the folder and moves it into a
      sub-folder when the upload completes; a client that hangs up (or is cut off) mid-upload leaves
      that file behind. Once no upload is in flight, any file at the top of the folder is such a
      leftover; so is one nobody has written to for ``10 × stall_s``.

    The visitor is the client address uvicorn reports (``X-Forwarded-For`` only from
    ``FORWARDED_ALLOW_IPS``), as ``ui.common.limit_clients`` counts it."""

    def __init__(self, app, quota: DiskQuota, upload_path: str = "/gradio_api/upload", stall_s: float = STALL_S,
                 step: int = 4 * 2**20) -> None:
        self.app, self.quota, self.upload_path, self.stall_s, self.step = app, quota, upload_path, stall_s, step
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith(self.upload_path):
            return await self.app(scope, receive, send)
        self.in_flight += 1
        try:
            await self._upload(scope, receive, send)
        finally:
            self.in_flight -= 1
            await anyio.to_thread.run_sync(self._tidy, self.in_flight == 0)

    async def _upload(self, scope, receive, send) -> None:
        client = scope.get("client")
        visitor = client[0] if client else None
        declared = declared_length(scope)
        try:
            reservation = await anyio.to_thread.run_sync(self.quota.reserve, max(declared or 0, 0), visitor, "upload")
        except DiskFull as e:
            return await _plain(send, e.status, str(e))

        delivered = 0  # bytes the app has had

        async def check(seen: int, chunk: int) -> tuple[int, str] | None:
            nonlocal delivered
            # Gradio writes each chunk to its file before it asks for the next one.
            reservation.written = max(0, seen - chunk - _UNWRITTEN)
            if declared is not None and seen > declared:
                return 413, LONGER_THAN_DECLARED
            if declared is None and seen > reservation.size:
                need = seen - reservation.size
                try:
                    await anyio.to_thread.run_sync(self.quota.grow, reservation, need + self.step)
                except DiskFull:
                    try:
                        await anyio.to_thread.run_sync(self.quota.grow, reservation, need)
                    except DiskFull as e:
                        return e.status, str(e)
            delivered = seen
            return None

        answer = bytearray()

        def keep_answer(message) -> None:
            if message["type"] == "http.response.body" and len(answer) < 2**20:
                answer.extend(message.get("body", b""))

        paths: list[str] = []
        try:
            status = await _metered(self.app, scope, receive, send, check, self.stall_s, keep_answer)
            if status == 200:
                paths = self._answered(bytes(answer))
        finally:
            if not paths:
                reservation.written = delivered  # all of it may be in a left-over file until it is tidied
            self.quota.release(reservation, paths)

    def _answered(self, answer: bytes) -> list[str]:
        """The paths of an upload answer (a JSON list) inside the folder."""
        try:
            names = json.loads(answer)
        except ValueError:
            return []
        root = os.path.realpath(self.quota.folder)
        return [p for p in names if isinstance(p, str) and os.path.realpath(p).startswith(root + os.sep)] \
            if isinstance(names, list) else []

    def _tidy(self, idle: bool) -> None:
        remove_partial_uploads(self.quota.folder, None if idle else 10 * self.stall_s)


def declared_length(scope) -> int | None:
    """The request's ``Content-Length``: None when absent (a chunked body), -1 when not a whole number."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


async def _plain(send, status: int, sentence: str) -> None:
    body = sentence.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _metered(app, scope, receive, send, check, stall_s: float | None = None, watch=None) -> int | None:
    """Run ``app`` with its request body counted as it streams; returns the status sent (None: none).

    ``await check(seen, chunk)`` runs for each chunk before the app gets it (``seen``: bytes so far,
    this chunk's ``chunk`` included) and returns None, or ``(status, sentence)`` to refuse the request;
    ``stall_s`` refuses a body that sends nothing for that long (408). A refused body is cut off: the
    app is told the client left (``http.disconnect``), its own answer is dropped and the sentence sent
    instead. ``watch(message)`` sees each response message passed on."""
    refusal: tuple[int, str] | None = None
    seen = 0
    status: int | None = None

    async def counted():
        nonlocal seen, refusal
        if refusal is not None:
            return {"type": "http.disconnect"}
        message = None
        with anyio.move_on_after(stall_s):
            message = await receive()
        if message is None:
            refusal = 408, f"The upload sent nothing for {stall_s:g} s and was stopped; try again."
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            chunk = len(message.get("body", b""))
            seen += chunk
            refusal = await check(seen, chunk)
            if refusal is not None:
                return {"type": "http.disconnect"}
        return message

    async def passed_on(message):
        nonlocal status
        if message["type"] == "http.response.start":
            if refusal is not None:
                return  # the app's answer to a body that was cut off: ours goes instead
            status = message["status"]
        elif status is None:
            return
        if watch is not None:
            watch(message)
        await send(message)

    try:
        await app(scope, counted, passed_on)
    except Exception:
        if refusal is None or status is not None:
            raise
    if refusal is not None and status is None:
        await _plain(send, *refusal)
        return refusal[0]
    return status


def remove_partial_uploads(folder: Path, older_than_s: float | None = None) -> None:
    """Delete the files directly inside ``folder`` (finished uploads live in its sub-folders); with
    ``older_than_s``, only those not written to for that long."""
    cutoff = time.time() - older_than_s if older_than_s is not None else None
    for path in _entries(Path(folder)):
        try:
            if path.is_file() and not path.is_symlink() and (cutoff is None or path.stat().st_mtime < cutoff):
                path.unlink(missing_ok=True)
        except OSError:
            continue


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


# ------------------------------------------------------------------------------------- freed memory

IDLE_TRIM_S = 5.0  # a quiet spell this long (no request begun or ended) gives freed memory back


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` (every arena's free pages back to the system), or None off glibc."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class ReturnFreedMemory:
    """ASGI middleware: once no HTTP request has begun or ended for ``idle_s`` seconds, the memory the
    process freed goes back to the system (``trim``: glibc's ``malloc_trim(0)``), once per quiet spell.

    Why here and not with ``MALLOC_MMAP_THRESHOLD_`` (what app.py set before): glibc keeps freed activation
    memory (a server that once held a 600 px EfficientNet stayed at several GB), and a low mmap threshold
    gives it back at every free, so every forward pass faulted all its activations in afresh from the
    kernel (ResNet-50: ~42,000 page faults, the pass ~1.8× slower). Kept by glibc while requests come,
    the memory is reused without faults; given back when the server goes quiet, idle RSS stays low.
    A trim during a long request (no request begun or ended) only returns what is free at that moment.
    """

    def __init__(self, app, idle_s: float = IDLE_TRIM_S, trim: Callable[[], object] | None = None) -> None:
        self.app, self.idle_s = app, idle_s
        self.trim = trim if trim is not None else _malloc_trim()
        self.last = time.monotonic()
        self.woken = threading.Event()
        self.trims = 0  # how many quiet spells ended in a trim (for tests)
        if self.trim is not None:
            threading.Thread(target=self._run, name="return-freed-memory", daemon=True).start()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._touch()
        try:
            await self.app(scope, receive, send)
        finally:
            self._touch()  # a request that freed its memory as it ended: the quiet spell starts now

    def _touch(self) -> None:
        self.last = time.monotonic()
        self.woken.set()

    def _run(self) -> None:
        while True:
            self.woken.wait()
            while (quiet := time.monotonic() - self.last) < self.idle_s:
                time.sleep(self.idle_s - quiet)
            self.woken.clear()  # the requests of this spell are answered by this one trim
            self.trim()
            self.trims += 1
