"""The server process: a private temp folder, and a clean exit on signals.

No gradio here (``app.py`` calls these before it imports the UI): the temp folder must be chosen
before gradio is imported, because gradio reads ``GRADIO_TEMP_DIR`` at import time.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

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


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (``upload_limit`` for uploads) with
    413 and one sentence, by ``Content-Length`` when sent, else by reading (at most ``limit`` bytes of)
    the body before the app sees it."""

    def __init__(self, app, limit: int = 1 * 2**20, upload_limit: int = 25 * 2**20, upload_path: str = "/gradio_api/upload") -> None:
        self.app, self.limit, self.upload_limit, self.upload_path = app, limit, upload_limit, upload_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope.get("path", "").endswith(self.upload_path) else self.limit
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                return await _too_large(send, limit)
            return await self.app(scope, receive, send)
        messages, seen = [], 0  # no length given: read the body (at most limit bytes), then replay it
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > limit:
                return await _too_large(send, limit)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send, limit: int) -> None:
    body = f"The request is larger than the {limit // 2**20} MB this server accepts.".encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class UploadJanitor:
    """ASGI middleware for the upload route: after each upload, remove what cut-off uploads left behind
    and keep the folder within ``quota`` bytes, oldest files first.

    Gradio streams an upload into a temporary file at the top of the upload folder and moves it into a
    sub-folder when the upload completes; a client that hangs up mid-upload leaves that file behind.
    Once no upload is in flight, any file at the top of the folder is such a leftover."""

    def __init__(self, app, folder: str | os.PathLike, quota: int, upload_path: str = "/gradio_api/upload") -> None:
        self.app, self.folder, self.quota, self.upload_path = app, Path(folder), quota, upload_path
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").endswith(self.upload_path):
            return await self.app(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            idle = self.in_flight == 0
            await anyio.to_thread.run_sync(self._tidy, idle)

    def _tidy(self, idle: bool) -> None:
        if idle:
            remove_partial_uploads(self.folder)
        enforce_quota(self.folder, self.quota)


def remove_partial_uploads(folder: Path) -> None:
    """Delete the files directly inside ``folder`` (finished uploads live in its sub-folders)."""
    for path in _entries(folder):
        if path.is_file():
            path.unlink(missing_ok=True)


def enforce_quota(folder: Path, quota: int) -> int:
    """Delete the oldest files under ``folder`` until the rest take at most ``quota`` bytes; returns
    the bytes left."""
    files = []
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            stat = path.stat()
        except OSError:  # removed meanwhile
            continue
        if path.is_file():
            files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if total <= quota:
            break
        path.unlink(missing_ok=True)
        total -= size
    return total


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []
