"""The disk quota and the request-body middlewares of :mod:`cnnviz.server`, without a server: bytes are
reserved before they are written (per visitor and in total), nothing is deleted to make room, and a body
is counted as it streams whatever its headers say."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from cnnviz import server
from cnnviz.server import BodyLimit, DiskFull, DiskQuota, UploadGuard
from tests.fixtures.loop import run_coroutine

MB = 2**20


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


# ------------------------------------------------------------------------------------------ DiskQuota


def test_reserve_and_release_in_total(tmp_path):
    quota = DiskQuota(tmp_path, total=10 * MB)
    first = quota.reserve(6 * MB)
    with pytest.raises(DiskFull) as refused:
        quota.reserve(5 * MB, what="upload")
    assert str(refused.value) == (
        "The server's disk space for uploads and results is full: 6.0 MB of 10 MB in use, and this upload "
        "needs 5.0 MB more. Files are removed an hour after they were made; try again in a few minutes.")
    assert refused.value.status == 507
    quota.release(first)
    assert quota.usage() == 0
    quota.reserve(10 * MB)  # all of it, once the first is given back
    with pytest.raises(DiskFull, match="larger than the 10 MB this server keeps on disk for everyone"):
        DiskQuota(tmp_path, total=10 * MB).reserve(11 * MB, what="upload")


def test_a_visitor_is_held_to_a_share_and_the_others_are_not(tmp_path):
    quota = DiskQuota(tmp_path, total=10 * MB, per_visitor=4 * MB)
    mine = quota.reserve(3 * MB, "10.0.0.1")
    quota.release(mine, [write(tmp_path / "a" / "photo.png", 3 * MB)])
    with pytest.raises(DiskFull) as refused:
        quota.reserve(2 * MB, "10.0.0.1", "result")
    assert str(refused.value).startswith(
        "Your uploads and results take 3.0 MB of the 4.0 MB this server keeps per visitor, and this result needs 2.0 MB more.")
    quota.reserve(2 * MB, "10.0.0.2")  # another visitor still has room
    quota.reserve(2 * MB)  # and a write nobody owns counts in the total only
    with pytest.raises(DiskFull, match="disk space for uploads and results is full: 7.0 MB of 10 MB"):
        quota.reserve(4 * MB, "10.0.0.3")  # a share left, but not the total
    with pytest.raises(DiskFull, match="This 5.0 MB file is larger than the 4.0 MB this server keeps per visitor"):
        quota.reserve(5 * MB, "10.0.0.4")
    assert quota.usage("10.0.0.1") == 3 * MB and quota.usage("10.0.0.2") == 2 * MB


def test_files_written_or_removed_behind_its_back_count_at_the_next_reservation(tmp_path):
    """Gradio's own copies take room; Gradio's delete_cache (or a /tmp cleaner) gives it back."""
    quota = DiskQuota(tmp_path, total=10 * MB, per_visitor=5 * MB)
    theirs = write(tmp_path / "gradio-copy" / "grid.png", 7 * MB)
    with pytest.raises(DiskFull):
        quota.reserve(4 * MB)
    reservation = quota.reserve(3 * MB, "10.0.0.1")
    photo = write(tmp_path / "sha" / "photo.png", 3 * MB)
    quota.release(reservation, [photo])
    assert quota.usage() == 10 * MB and quota.usage("10.0.0.1") == 3 * MB
    theirs.unlink()
    photo.unlink()  # expired: no longer the visitor's either
    assert quota.usage() == 0 and quota.usage("10.0.0.1") == 0
    quota.reserve(5 * MB, "10.0.0.1")


def test_an_upload_half_on_disk_is_counted_once(tmp_path):
    quota = DiskQuota(tmp_path, total=10 * MB)
    reservation = quota.reserve(4 * MB)
    write(tmp_path / "tmpupload", 1 * MB)  # the part already written, in the folder
    reservation.written = 1 * MB
    assert quota.usage() == 4 * MB
    quota.reserve(6 * MB)
    with pytest.raises(DiskFull):
        quota.reserve(1)


def test_concurrent_reservations_never_pass_the_quota(tmp_path):
    """50 threads ask for 1 MB each at the same moment of a 10 MB folder; exactly 10 get it."""
    quota = DiskQuota(tmp_path, total=10 * MB, per_visitor=3 * MB)
    start, hold = threading.Barrier(50), threading.Barrier(50)
    granted, refused = [], []

    def one(i: int) -> None:
        visitor = f"10.0.0.{i % 25}"
        start.wait()
        try:
            reservation = quota.reserve(MB, visitor)
        except DiskFull:
            refused.append(i)
            hold.wait()
            return
        hold.wait()  # every reservation held until all have been asked for
        granted.append(write(tmp_path / uuid.uuid4().hex / "f.bin", MB))
        reservation.written = MB
        quota.release(reservation, [granted[-1]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 10 and len(refused) == 40
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) == 10 * MB


def test_concurrent_growth_from_threads_never_passes_the_quota(tmp_path):
    """Bodies without a length grow their reservations chunk by chunk, from many threads at once."""
    quota = DiskQuota(tmp_path, total=8 * MB)
    reservations = [quota.reserve(0) for _ in range(8)]
    start = threading.Barrier(8)
    grown = [0] * 8

    def grow(i: int) -> None:
        start.wait()
        for _ in range(64):
            try:
                quota.grow(reservations[i], 64 * 2**10)
            except DiskFull:
                return
            grown[i] += 64 * 2**10

    threads = [threading.Thread(target=grow, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(grown) == 8 * MB == quota.usage()


def test_expiry_removes_only_old_outputs(tmp_path):
    quota = DiskQuota(tmp_path, total=10 * MB, expire_s=60)
    old = write(tmp_path / "outputs" / "a" / "old.png", 10)
    new = write(tmp_path / "outputs" / "b" / "new.png", 10)
    upload = write(tmp_path / "sha" / "photo.png", 10)  # uploads are Gradio's to expire
    past = time.time() - 120
    for path in (old, old.parent, upload):
        os.utime(path, (past, past))
    assert quota.expire() == 1
    assert not old.parent.exists() and new.exists() and upload.exists()


def test_a_refusal_counts_again_so_files_gone_since_the_last_scan_make_room(tmp_path):
    quota = DiskQuota(tmp_path, total=10 * MB, rescan_s=3600, recheck_s=0)  # no scan by age during the test
    gone = write(tmp_path / "sha" / "old-photo.png", 8 * MB)
    assert quota.usage() == 8 * MB
    gone.unlink()  # Gradio's delete_cache
    quota.reserve(9 * MB)  # the last count says 8 MB are used: counted again before refusing


def test_what_a_reservation_costs(tmp_path):
    """A fresh scan of a folder of 1,000 files in 1,000 folders, and a reservation between scans."""
    for i in range(1000):
        write(tmp_path / f"{i:04d}" / "f.bin", 10)
    quota = DiskQuota(tmp_path, total=10 * MB)
    start = time.perf_counter()
    for _ in range(5):
        assert quota.usage() == 10_000
    scan = (time.perf_counter() - start) / 5
    start = time.perf_counter()
    for _ in range(100):
        quota.release(quota.reserve(1))
    cached = (time.perf_counter() - start) / 100
    print(f"\na scan of 1,000 files: {scan * 1000:.1f} ms; a reservation between scans: {cached * 1e6:.0f} µs")


# ------------------------------------------------------------------------------------- middlewares


def run_asgi(middleware, chunks: list[bytes], declared: int | None, client: str = "10.0.0.1",
             path: str = "/gradio_api/upload", hang: bool = False):
    """Send ``chunks`` through ``middleware`` (``declared``: the Content-Length header, None: chunked;
    ``hang``: then say there is more, and send nothing); returns (status, body text)."""
    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "client": (client, 4242)}
    queue = list(chunks)
    sent: list[dict] = []

    async def receive():
        if not queue:
            await asyncio.sleep(3600)  # a client that has nothing more to say
        body = queue.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(queue) or hang}

    async def send(message):
        sent.append(message)

    run_coroutine(middleware(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


class Disconnected(Exception):
    """What Starlette raises when the body stops with ``http.disconnect``."""


class GradioLikeUpload:
    """The upload route as Gradio runs it: the body streams into a temporary file at the top of the
    folder, which moves into a sub-folder named by its hash when complete; the answer lists the paths."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.received = folder, 0

    async def __call__(self, scope, receive, send):
        temp = self.folder / f"tmp{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        with temp.open("wb") as f:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                self.received += len(message["body"])
                f.write(message["body"])
                digest.update(message["body"])
                if not message.get("more_body"):
                    break
        dest = self.folder / digest.hexdigest() / "upload.bin"
        dest.parent.mkdir(exist_ok=True)
        temp.rename(dest)
        body = json.dumps([str(dest)]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_an_upload_that_would_pass_the_quota_is_refused_before_a_byte_is_written(tmp_path):
    quota = DiskQuota(tmp_path, total=4 * MB, per_visitor=3 * MB)
    app = GradioLikeUpload(tmp_path)
    status, text = run_asgi(UploadGuard(app, quota), [os.urandom(MB)] * 2, declared=2 * MB)
    assert status == 200 and quota.usage("10.0.0.1") == 2 * MB
    status, text = run_asgi(UploadGuard(app, quota), [os.urandom(MB)] * 2, declared=2 * MB)
    assert status == 507 and text.startswith("Your uploads and results take 2.0 MB of the 3.0 MB")
    status, text = run_asgi(UploadGuard(app, quota), [os.urandom(MB)] * 3, declared=3 * MB, client="10.0.0.2")
    assert status == 507 and "disk space for uploads and results is full" in text
    assert app.received == 2 * MB and folder_bytes(tmp_path) == 2 * MB


def test_a_body_without_a_length_is_cut_off_at_the_quota(tmp_path):
    quota = DiskQuota(tmp_path, total=3 * MB)
    app = GradioLikeUpload(tmp_path)
    guard = UploadGuard(app, quota, step=256 * 2**10)
    status, text = run_asgi(guard, [os.urandom(256 * 2**10)] * 20, declared=None)  # 5 MB in chunks
    assert status == 507 and "disk space for uploads and results is full" in text
    assert app.received <= 3 * MB
    assert folder_bytes(tmp_path) == 0  # the cut-off file was removed (no other upload in flight)
    assert quota.usage() == 0 and guard.in_flight == 0
    status, _ = run_asgi(guard, [os.urandom(256 * 2**10)] * 8, declared=None)  # 2 MB in chunks fits
    assert status == 200 and folder_bytes(tmp_path) == 2 * MB


def test_a_body_longer_than_its_declared_length_is_cut_off(tmp_path):
    """uvicorn frames a body by its Content-Length; behind another server the middlewares still do."""
    quota = DiskQuota(tmp_path, total=100 * MB)
    app = GradioLikeUpload(tmp_path)
    status, text = run_asgi(BodyLimit(UploadGuard(app, quota), upload_limit=50 * MB), [os.urandom(MB)] * 20, declared=1000)
    assert status == 413 and text == server.LONGER_THAN_DECLARED
    assert app.received <= 1000 and folder_bytes(tmp_path) == 0 and quota.usage() == 0


def test_request_bodies_are_counted_as_they_stream_not_buffered(tmp_path):
    seen = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            seen.append(len(message["body"]))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    status, text = run_asgi(BodyLimit(app, limit=MB), [b"x" * (256 * 2**10)] * 8, declared=None, path="/gradio_api/call/x")
    assert status == 413 and text == "The request is larger than the 1 MB this server accepts."
    assert seen == [256 * 2**10] * 4  # the app had the first chunks as they came, and nothing past the limit
    seen.clear()
    assert run_asgi(BodyLimit(app, limit=MB), [b"{}"], declared=None, path="/gradio_api/call/x") == (200, "ok")


def test_a_stalled_upload_is_cut_off_and_gives_its_reservation_back(tmp_path):
    quota = DiskQuota(tmp_path, total=4 * MB)
    guard = UploadGuard(GradioLikeUpload(tmp_path), quota, stall_s=0.2)
    status, text = run_asgi(guard, [os.urandom(MB)], declared=3 * MB, hang=True)  # promises 3 MB, sends 1, then nothing
    assert status == 408 and text == "The upload sent nothing for 0.2 s and was stopped; try again."
    assert quota.usage() == 0 and folder_bytes(tmp_path) == 0


# ----------------------------------------------------------------------------------- output files


def test_output_files_are_refused_when_full_and_nothing_is_deleted(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.context import LocalContext

    from cnnviz.ui.common import OutputFiles

    quota = DiskQuota(tmp_path, total=MB, per_visitor=MB // 2)
    files = OutputFiles(quota)
    paths = [files.write("same-name.png", b"same bytes") for _ in range(70)]  # never evicted, never reused
    assert len(set(paths)) == 70 and all(Path(p).exists() for p in paths)

    class Request:
        class client:
            host = "10.0.0.1"

    LocalContext.request.set(Request())
    try:
        files.write("a.npy", b"\0" * (MB // 3))
        with pytest.raises(gr.Error) as refused:
            files.write("b.npy", b"\0" * (MB // 3))
        assert "Your uploads and results take 0.3 MB of the 0.5 MB this server keeps per visitor" in refused.value.message
    finally:
        LocalContext.request.set(None)
    files.write("c.npy", b"\0" * (MB // 3))  # nobody's: the total still has room
    with pytest.raises(gr.Error, match="The server's disk space for uploads and results is full"):
        files.write("d.npy", b"\0" * (MB // 3))
    assert all(Path(p).exists() for p in paths) and len(list((tmp_path / "outputs").iterdir())) == 72


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_freed_memory_goes_back_once_per_quiet_spell_never_while_requests_come():
    trims: list[float] = []
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    giver = server.ReturnFreedMemory(app, idle_s=1.0, trim=lambda: trims.append(time.monotonic()))
    time.sleep(1.3)
    assert trims == []  # no request yet: nothing was freed by one
    for _ in range(6):  # requests 0.2 s apart: never a quiet second
        run_coroutine(giver({"type": "http"}, None, None))
        time.sleep(0.2)
    assert trims == [] and seen == ["http"] * 6
    last = giver.last  # when the last request ended
    time.sleep(1.8)
    assert len(trims) == 1 and trims[0] - last >= 1.0  # once, a quiet second after the last request
    time.sleep(1.3)
    assert len(trims) == 1  # once per spell, not every second
    run_coroutine(giver({"type": "lifespan"}, None, None))  # not a request: starts no spell
    time.sleep(1.3)
    assert len(trims) == 1 and seen[-1] == "lifespan"
    run_coroutine(giver({"type": "http"}, None, None))
    time.sleep(2.0)
    assert len(trims) == 2


def test_freed_memory_is_given_back_by_glibc():
    trim = server._malloc_trim()
    if trim is None:
        pytest.skip("not glibc: there is nothing to trim")
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    rss = lambda: int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # noqa: E731
    blocks = [libc.malloc(64 * 2**10) for _ in range(2048)]  # 128 MB of small blocks: the heap, not mmap
    for b in blocks:
        ctypes.memset(b, 1, 64 * 2**10)
    held = rss()
    for b in blocks:
        libc.free(b)
    kept = rss()
    trim()
    assert held - rss() > 100 * 2**20, (held, kept, rss())  # what glibc kept after the frees went back
