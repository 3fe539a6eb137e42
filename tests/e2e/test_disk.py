"""The disk quota in the real app (``python app.py`` with a 10 MB folder and a 4 MB share per visitor):
bytes are reserved before they are written, so concurrent uploads never take the folder past the quota;
an upload that hides its size is counted as it streams; and a visitor's files are never deleted to make
room for someone else's: the newcomer gets a sentence instead.

Visitors are told apart by ``X-Forwarded-For``, which uvicorn trusts from the loopback address (its
default ``FORWARDED_ALLOW_IPS``), as it would from a reverse proxy."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES, App, Raw
from .test_api import assert_readable
from .test_public_link import maps_args

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MB = 2**20
QUOTA = 10 * MB
SHARE = 4 * MB
FULL = "The server's disk space for uploads and results is full"
BOUNDARY = "cnnviz-disk-test"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = App(tmp_path_factory.mktemp("disk-app"), env={"CNNVIZ_DISK_QUOTA_MB": "10", "CNNVIZ_VISITOR_DISK_MB": "4"})
    try:
        yield app.serving()
    finally:
        app.stop()


@pytest.fixture
def folder(app) -> Path:
    """The app's folder, emptied (as a /tmp cleaner would) so each test starts with the whole quota."""
    for child in app.folder.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    # files removed behind the quota's back are seen at its next count: it counts again before a refusal
    # when its last count is older than recheck_s (0.25 s), so wait that long for the empty folder to count
    time.sleep(0.5)
    return app.folder


def folder_bytes(folder: Path) -> int:
    """What the folder holds: the bytes of its files (not following links)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile
                continue
    return total


def left_over(folder: Path) -> list[Path]:
    """Files at the top of the folder: where Gradio streams an upload before moving it into place."""
    return [p for p in folder.iterdir() if p.is_file()]


class Sampler:
    """Measures the folder over and over in a thread while a scenario runs; ``peak``: the most seen."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self.samples = folder, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, folder_bytes(self.folder))
            self.samples += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def multipart(payload: bytes, name: str = "noise.bin") -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + payload + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(url: str, payload: bytes, visitor: str, *, chunked: bool = False, slow: bool = False,
           http: httpx.Client | None = None) -> httpx.Response:
    """POST ``payload`` to the upload route as ``visitor``: with its length declared, or ``chunked``
    (no length); ``slow``: in 64 KB pieces with a pause between them, so uploads overlap."""
    body = multipart(payload)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "x-forwarded-for": visitor}
    if not chunked:
        headers["content-length"] = str(len(body))  # with a generator body, httpx then sends no chunks

    def pieces():
        for i in range(0, len(body), 64 * 2**10):
            yield body[i:i + 64 * 2**10]
            if slow:
                time.sleep(0.005)

    own = http is None
    http = http or httpx.Client(timeout=120)
    try:
        return http.post(url.rstrip("/") + "/gradio_api/upload", content=pieces() if chunked or slow else body, headers=headers)
    finally:
        if own:
            http.close()


def assert_refused(response: httpx.Response, *must_contain: str) -> str:
    assert response.status_code == 507, (response.status_code, response.text[:300])
    assert_readable(response.text, *must_contain)
    return response.text


def test_concurrent_uploads_never_take_the_folder_past_the_quota(app, folder):
    """Twelve visitors upload 2 MB each at the same time into a 10 MB folder."""
    payloads = [os.urandom(2 * MB) for _ in range(12)]
    with Sampler(folder) as sampler, ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda i: upload(app.url, payloads[i], f"10.1.0.{i}", slow=True), range(12)))
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    print(f"\n{len(accepted)} of 12 uploads of 2 MB accepted; the 10 MB folder peaked at {sampler.peak / MB:.2f} MB "
          f"({sampler.samples} measurements)")
    assert accepted and refused, [r.status_code for r in responses]
    for response in refused:
        assert_refused(response, FULL, "10 MB")
    assert sampler.samples > 1 and sampler.peak <= QUOTA, f"the folder reached {sampler.peak / MB:.1f} MB"
    assert folder_bytes(folder) == 2 * MB * len(accepted) <= QUOTA
    assert all(Path(r.json()[0]).exists() for r in accepted)


def test_uploads_that_hide_their_size_are_counted_as_they_stream(app, folder):
    raw = Raw(app.url)
    # No length at all (chunked), larger than the visitor's share: cut off at the share, nothing kept.
    with Sampler(folder) as sampler:
        response = upload(app.url, os.urandom(12 * MB), "10.2.0.1", chunked=True)
    assert_refused(response, "4.0 MB this server keeps per visitor")
    assert sampler.peak <= SHARE, f"the folder reached {sampler.peak / MB:.1f} MB"

    # A Content-Length smaller than what is sent: the body is what was declared, the rest is no request.
    before = folder_bytes(folder)
    body = multipart(os.urandom(6 * MB), "liar.bin")
    with socket.create_connection(("127.0.0.1", app.port)) as sock:
        sock.sendall((f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 10.2.0.2\r\n"
                      f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 65536\r\n\r\n").encode())
        try:
            sock.sendall(body)
        except OSError:  # the server may close the connection on what follows the declared body
            pass
        sock.settimeout(30)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    assert folder_bytes(folder) - before <= 65536

    # A declared length it never sends (hangs up half-way): nothing is left, and its reservation is back.
    with socket.create_connection(("127.0.0.1", app.port)) as sock:
        sock.sendall((f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 10.2.0.3\r\n"
                      f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {3 * MB}\r\n\r\n").encode()
                     + multipart(os.urandom(MB))[:MB])
    deadline = time.monotonic() + 30  # the server notices the hang-up, then tidies
    while left_over(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left_over(folder), "a cut-off upload left a partial file"
    response = None
    while time.monotonic() < deadline:  # once the hang-up is noticed, the visitor's whole share is free again
        response = upload(app.url, os.urandom(3 * MB + MB // 2), "10.2.0.3")
        if response.status_code == 200:
            break
        time.sleep(0.2)
    assert response is not None and response.status_code == 200, response.text if response else None
    assert folder_bytes(folder) <= QUOTA
    status, outputs = raw.call("filters", ["resnet18", "random", "layer"])  # and the server serves on
    assert status == "complete", outputs


def test_a_visitors_upload_stays_usable_when_others_fill_the_disk(app, folder):
    """The old behaviour deleted the oldest files to make room: the first visitor's photo went
    ("That upload is no longer on the server"). Now the newcomers are refused instead."""
    alice = Raw(app.url)
    alice.http.headers["x-forwarded-for"] = "10.3.0.1"
    photo = {"path": alice.upload(EXAMPLES / "cat.png"), "meta": {"_type": "gradio.FileData"}}
    status, (grid, labels, caption) = alice.call("feature_maps", maps_args(photo))
    assert status == "complete", grid

    others = Raw(app.url)
    first = upload(app.url, os.urandom(3 * MB), "10.3.0.2", http=others.http)
    assert first.status_code == 200, first.text
    assert_refused(upload(app.url, os.urandom(2 * MB), "10.3.0.2", http=others.http),
                   "Your uploads and results take 3.0 MB of the 4.0 MB this server keeps per visitor")
    left, i = QUOTA - folder_bytes(folder) - MB, 0
    while left > 0:  # others fill the disk up to its last megabyte, 3 MB each
        response = upload(app.url, os.urandom(min(left, 3 * MB)), f"10.3.1.{i}", http=others.http)
        assert response.status_code == 200, response.text
        left, i = left - 3 * MB, i + 1
    assert QUOTA - folder_bytes(folder) < MB + 1000
    assert_refused(upload(app.url, os.urandom(2 * MB), "10.3.2.1", http=others.http), FULL)

    assert Path(photo["path"]).exists()
    status, outputs = alice.call("feature_maps", maps_args(photo, layer="layer1"))
    assert status == "complete", outputs  # not "That upload is no longer on the server"
    assert alice.download(grid)  # her earlier result is still served too
    assert folder_bytes(folder) <= QUOTA
