"""The server's life: its own temp folder, a clean exit on SIGINT/SIGTERM (even mid-request), one line
when the port is taken, healing when a /tmp cleaner removes its files, and work nobody waits for that
stops. A test that stops or damages the server starts its own ``python app.py``; the others use the
session's shared server and read only what its log gained during the test."""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time

import httpx
import pytest

from .conftest import EXAMPLES, App, Raw, Server
from .test_public_link import maps_args

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_request_exits_cleanly_and_tidies_up(start, signum):
    app = start().serving()
    folder = app.folder
    raw = Raw(app.url)
    raw.upload(EXAMPLES / "cat.png")
    assert any(folder.rglob("*")), "the upload should be in the server's own folder"
    # efficientnet_b7 at 600 px: a pass of several seconds on 2 cores, still running when the signal lands
    def heavy_call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server going away mid-answer is the point
            raw.call("architecture", ["efficientnet_b7", "random", 3])

    busy = threading.Thread(target=heavy_call, daemon=True)
    busy.start()
    time.sleep(4)
    app.proc.send_signal(signum)
    assert app.proc.wait(30) == 0, app.output()[-2000:]
    assert "terminate called" not in app.output() and "Traceback" not in app.output(), app.output()[-2000:]
    assert not folder.exists(), "the private temp folder is left behind"


def test_port_in_use_is_one_line(server, start):
    if server.log is None:
        pytest.skip("the port of an external server (CNNVIZ_E2E_URL) may not be on this machine")
    second = start(int(server.url.rstrip("/").rsplit(":", 1)[1]))  # the shared server holds the port
    assert second.proc.wait(120) != 0
    text = second.output().strip()
    assert "Traceback" not in text, text
    assert text.splitlines()[-1].startswith("Cannot serve on 127.0.0.1:") and "--port" in text, text
    assert not list(second.parent.iterdir()), "the failed server left a temp folder"


def test_a_tmp_cleaner_does_not_break_the_server(start):
    app = start().serving()
    raw = Raw(app.url)
    for _ in range(3):
        assert raw.call("filters", ["resnet18", "random", "layer"])[0] == "complete"
    for child in app.folder.iterdir():  # what a /tmp cleaner does: the files and folders go
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    for _ in range(5):  # the outputs folder, gone, is made again
        status, outputs = raw.call("filters", ["resnet18", "random", "layer"])
        assert status == "complete", outputs
    status, outputs = raw.call("feature_maps", maps_args({"path": raw.upload(EXAMPLES / "coffee.png")}))
    assert status == "complete", outputs
    status, outputs = raw.call("feature_maps", maps_args({"path": str(EXAMPLES / "cat.png")}))  # an example
    assert status == "complete", outputs
    assert str(app.folder) not in app.output()


def _join(http, url: str, fn_index: int, data: list, session: str) -> str:
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    response = http.post(f"{url}gradio_api/queue/join", json=body)
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def _dependency(config: dict, api_name: str | None = None, trigger: tuple[str, str] | None = None) -> int:
    """fn_index of the dependency with that api_name, or triggered by (elem_id, event)."""
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    for dep in config["dependencies"]:
        if api_name and dep.get("api_name") == api_name:
            return dep["id"]
        if trigger and [ids.get(trigger[0]), trigger[1]] in [list(t) for t in dep["targets"]] and dep.get("backend_fn", True):
            return dep["id"]  # (not a browser-only js event on the same trigger)
    raise AssertionError(f"no dependency {api_name or trigger}")


def _wait_for_any_log(app: App | LogSince, texts: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in app.output() for text in texts):
        assert time.monotonic() < deadline, f"none of {texts} logged:\n{app.output()[-2000:]}"
        time.sleep(0.2)


class LogSince:
    """What a shared server (the session's, or a module's :class:`App`) logs from now on (earlier tests'
    lines are not this test's)."""

    def __init__(self, server: Server | App) -> None:
        if server.log is None:
            pytest.skip("needs the server's log (an external server from CNNVIZ_E2E_URL has none here)")
        self.text = server.log_text if isinstance(server, Server) else server.output
        self.start = len(self.text())

    def output(self) -> str:
        return self.text()[self.start:]


def test_work_whose_client_is_gone_stops(server):
    import httpx

    log = LogSince(server)
    with httpx.Client(timeout=60) as http:
        config = http.get(f"{server.url}config").json()
        session = "gone-client"
        # efficientnet_b7 at 600 px: work long enough to be running, on 2 cores, after the client has gone
        _join(http, server.url, _dependency(config, api_name="architecture"), ["efficientnet_b7", "random", 3], session)
        with http.stream("GET", f"{server.url}gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():  # hang up as soon as the work has started
                if "process_starts" in line:
                    break
    _wait_for_any_log(log, ["architecture stopped mid-pass: gone", "architecture not started: gone"])


def test_a_newer_page_request_of_the_same_view_supersedes_the_older(server):
    import httpx

    log = LogSince(server)
    raw = Raw(server.url)
    image = {"path": raw.upload(EXAMPLES / "cat.png"), "meta": {"_type": "gradio.FileData"}}
    with httpx.Client(timeout=120) as http:
        config = http.get(f"{server.url}config").json()
        maps = _dependency(config, trigger=("input-image", "change"))  # the page's own (private) maps event
        session = "one-page"
        # a model no other test loads: the first request is still loading it when the second arrives
        args = ["efficientnet_b2", image, "", "random", "first", 16, "gray", "channel", None, 0.5]  # + channel, opacity
        first = _join(http, server.url, maps, args, session)
        second, done = None, {}
        with http.stream("GET", f"{server.url}gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if second is None and "process_starts" in line and first in line:
                    time.sleep(0.2)  # the older one is loading the model or in its pass, not only about to start
                    second = _join(http, server.url, maps, args[:2] + ["features.8"] + args[3:], session)
                if line.startswith("data: ") and '"process_completed"' in line:
                    message = json.loads(line[6:])
                    done[message["event_id"]] = message
                    if len(done) == 2:
                        break
    assert second is not None and done[second]["success"], done
    _wait_for_any_log(log, ["superseded"])
