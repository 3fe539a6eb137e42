"""Fixtures for the end-to-end tests: the real app in a subprocess, a Chromium page, library truths.

* ``app_url``: ``python app.py --port N`` on a free loopback port, offline (``CNNVIZ_OFFLINE=1``), CPU,
  analytics off, its own GRADIO_TEMP_DIR; output goes to ``test-artifacts/server.log``. Set
  ``CNNVIZ_E2E_URL`` to test an app that is already running instead (e.g. a patched copy).
* ``client``: a ``gradio_client.Client`` on that URL.
* ``browser_page``: a fresh Playwright (sync API) page in Debian's Chromium per test. Missing
  ``/usr/bin/chromium`` skips the browser tests, loudly, except under CI (``CI`` set and not
  false/0/no), where it fails them.
* ``shot``: ``shot("step")`` saves ``test-artifacts/<test>/NN-step.png``; a failing browser test also
  leaves ``ZZ-failure.png``.
* ``raw``: a ``Raw`` client speaking Gradio's HTTP protocol by hand (call, result, upload, download), what
  a script or a hostile client sends.
* ``library``: what the cnnviz library itself says about a model (the truth the app is compared with).

Every test here is marked ``slow`` (left out of the inner loop, ``python -m pytest -m "not slow"``) except
those marked ``inner_loop``: one at a time most take a few seconds, but together, with the server they
start and Chromium, they take minutes on 2 cores. The inner loop keeps one browser test and one API test.
"""
from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
EXAMPLES = ROOT / "examples"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
STARTUP_TIMEOUT_S = 120  # importing torch/timm/gradio on 2 CPU cores takes ~10 s; leave room
UI_TIMEOUT_MS = 60_000  # a model load plus a forward pass on 2 CPU cores, with a wide margin

# The library truths are computed in this process: it must be offline and on the CPU like the server.
os.environ["CNNVIZ_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("CNNVIZ_DEVICE", "cpu")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """``slow`` on every end-to-end test not marked ``inner_loop`` (see above), before ``-m`` selects."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and not item.get_closest_marker("inner_loop"):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can tell whether the test failed."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


# --------------------------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no server log)"


def _wait_until_serving(url: str, proc: subprocess.Popen | None, log: Path | None) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last = e
        time.sleep(0.3)
    raise RuntimeError(f"the app did not serve {url} within {STARTUP_TIMEOUT_S} s ({last}):\n{_log_tail(log) if log else ''}")


class Server:
    def __init__(self, url: str, log: Path | None, temp_parent: Path | None = None) -> None:
        self.url = url
        self.log = log
        self.temp_parent = temp_parent  # the GRADIO_TEMP_DIR it was started with (it works in a folder inside)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log and self.log.exists() else ""


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """The app as a user starts it (``python app.py``), in its own process, on a free loopback port."""
    external = os.environ.get("CNNVIZ_E2E_URL")
    if external:
        url = external.rstrip("/") + "/"
        _wait_until_serving(url, None, None)
        yield Server(url, None)
        return

    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "server.log"
    temp_parent = tmp_path_factory.mktemp("gradio-tmp")
    env = dict(
        os.environ,
        CNNVIZ_OFFLINE="1",
        CNNVIZ_DEVICE="cpu",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(temp_parent),
        PYTHONUNBUFFERED="1",
    )
    env.pop("GRADIO_SERVER_NAME", None)
    env.pop("GRADIO_SERVER_PORT", None)
    for attempt in range(3):  # the free port can be taken between probing and binding: try another
        port = _free_port()
        url = f"http://127.0.0.1:{port}/"
        with log.open("w", encoding="utf-8") as out:
            proc = subprocess.Popen(
                [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            _wait_until_serving(url, proc, log)
            break
        except RuntimeError:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if attempt == 2 or "address already in use" not in _log_tail(log).lower():
                raise
    try:
        yield Server(url, log, temp_parent)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (the app tidies up and exits), then SIGKILL after 15 s."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def app_url(server) -> str:
    return server.url


@pytest.fixture(scope="session")
def client(app_url, tmp_path_factory):
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=str(tmp_path_factory.mktemp("client-downloads")))


# -------------------------------------------------------------------------------------------- browser


_BROWSER_SKIPPED: list[str] = []


def pytest_terminal_summary(terminalreporter):
    """Say it at the end too: skipped browser tests are easy to miss in a long run."""
    if _BROWSER_SKIPPED:
        terminalreporter.write_sep(
            "!", f"BROWSER TESTS SKIPPED: {_BROWSER_SKIPPED[0]} is missing (they fail instead when CI is set)",
            red=True, bold=True,
        )


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium through Playwright's sync API (Playwright cannot download browsers here)."""
    if not CHROMIUM.exists():
        _BROWSER_SKIPPED.append(str(CHROMIUM))
        reason = (
            f"!!! BROWSER TESTS NOT RUN: {CHROMIUM} is missing. Install it (apt-get install -y chromium); "
            "Playwright cannot download its own browsers on this machine. !!!"
        )
        if _ci():
            pytest.fail(reason + " CI is set, so this is a failure, not a skip.", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _artifact_dir(request) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder = ARTIFACTS / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


class PageProblems:
    """Browser-side errors seen during a test: uncaught exceptions and console errors."""

    def __init__(self) -> None:
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []


@pytest.fixture
def browser_page(chromium, app_url, request):
    """A fresh browser context and page per test, 1400×1000, with generous timeouts for model loads."""
    with page_in(chromium, request) as page:
        yield page


@contextmanager
def page_in(browser, request):
    """A page in a new context of ``browser`` (1400×1000, generous timeouts), its errors collected in
    ``page.problems`` (also ``page.page_errors``), its screenshots in ``page.artifacts``, and a last
    screenshot when the test failed; the context is closed after."""
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    problems = PageProblems()
    page.on("pageerror", lambda e: problems.page_errors.append(str(e)))
    page.on("console", lambda m: problems.console_errors.append(m.text) if m.type == "error" else None)
    page.problems, page.page_errors = problems, problems.page_errors
    page.artifacts = _artifact_dir(request)
    page.shots = 0
    try:
        yield page
    finally:
        failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))
        if failed:
            try:
                page.screenshot(path=str(page.artifacts / "ZZ-failure.png"), full_page=True)
            except Exception:  # the page may be gone; the failure itself is what matters
                pass
        context.close()


@pytest.fixture
def shot(browser_page):
    """``shot("after-upload")`` saves a numbered full-page screenshot of the current step."""

    def take(step: str) -> Path:
        browser_page.shots += 1
        path = browser_page.artifacts / f"{browser_page.shots:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', step)}.png"
        browser_page.screenshot(path=str(path), full_page=True)
        return path

    return take


# ---------------------------------------------------------------------------------- a server of one's own


class App:
    """``python app.py`` of a test's own, with its own environment (a test that stops it, fills its
    queue, reads its log or sets its limits); ``start`` below makes them and kills them after the test."""

    def __init__(self, tmp_path: Path, port: int | None = None, env: dict[str, str] | None = None,
                 entry: tuple[str, ...] = ("app.py",)) -> None:
        self.parent = tmp_path / "temp-parent"
        self.parent.mkdir(exist_ok=True)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp_path / f"server-{self.port}-{time.monotonic_ns()}.log"
        env = dict(os.environ, CNNVIZ_OFFLINE="1", CNNVIZ_DEVICE="cpu", GRADIO_ANALYTICS_ENABLED="False",
                   GRADIO_TEMP_DIR=str(self.parent), PYTHONUNBUFFERED="1", **(env or {}))
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, *entry, "--port", str(self.port)], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def serving(self) -> App:
        _wait_until_serving(self.url, self.proc, self.log)
        return self

    @property
    def folder(self) -> Path:
        """The server's private temp folder, made inside GRADIO_TEMP_DIR."""
        (folder,) = [p for p in self.parent.iterdir() if p.name.startswith("cnnviz-")]
        return folder

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start(tmp_path):
    apps: list[App] = []

    def make(port: int | None = None, env: dict[str, str] | None = None, entry: tuple[str, ...] = ("app.py",)) -> App:
        """``entry``: what follows the interpreter, e.g. ``("-m", "cnnviz", "serve", "--model", ...)``."""
        apps.append(App(tmp_path, port, env, entry))
        return apps[-1]

    yield make
    for app in apps:
        app.stop()


# ------------------------------------------------------------------------------------------- raw HTTP


class Raw:
    """One reused HTTP client that speaks Gradio's two-step call protocol."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=120)

    def post(self, name: str, body: bytes | dict) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
        return self.http.post(f"{self.url}/gradio_api/call/{name}", content=content,
                              headers={"content-type": "application/json"})

    def call(self, name: str, data: list) -> tuple[str, object]:
        """``("complete", outputs)`` or ``("error", message)``; a refused request is ``("refused", text)``."""
        response = self.post(name, {"data": data})
        if response.status_code != 200:
            return "refused", response.text
        return self.result(name, response.json()["event_id"])

    def result(self, name: str, event_id: str) -> tuple[str, object]:
        event, payload = None, None
        with self.http.stream("GET", f"{self.url}/gradio_api/call/{name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: ") and event in ("complete", "error"):
                    payload = json.loads(line[len("data: "):])
                    break
        return event, payload

    def download(self, file: dict) -> bytes:
        """The bytes of an output file (``{"url": ...}`` in an answer), as a browser fetches them."""
        response = self.http.get(file["url"])
        response.raise_for_status()
        return response.content

    def upload(self, path: Path) -> str:
        with path.open("rb") as f:
            response = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (path.name, f)})
        response.raise_for_status()
        return response.json()[0]


@pytest.fixture(scope="module")
def raw(app_url) -> Raw:
    return Raw(app_url)


# -------------------------------------------------------------------------------------------- library


class Library:
    """What cnnviz itself computes, in this process, for comparing with what the app serves."""

    @functools.cache
    def architecture(self, model: str, weights: str = "random", depth: int = 3):
        import cnnviz

        return cnnviz.architecture(model, weights, depth)

    @functools.cache
    def layers(self, model: str, weights: str = "random"):
        import cnnviz

        return cnnviz.list_layers(cnnviz.load_model(model, weights))

    def layer_labels(self, model: str, weights: str = "random") -> list[str]:
        return [layer.label for layer in self.layers(model, weights)]

    def default_layer(self, model: str, weights: str = "random"):
        """The layer the app selects after a model change: the first convolution."""
        import cnnviz
        from cnnviz.layers import get_layer

        return get_layer(cnnviz.load_model(model, weights), None)

    @functools.cache
    def filter_grid(self, model: str, weights: str = "random", normalise: str = "layer"):
        import cnnviz

        return cnnviz.filter_grid(model, weights, normalise)

    @functools.cache
    def feature_maps(self, model: str, image: str, layer: str | None = None, weights: str = "random"):
        import cnnviz

        return cnnviz.feature_maps(model, image, layer, weights)


@pytest.fixture(scope="session")
def library() -> Library:
    return Library()


# ---------------------------------------------------------------------------------------------- files


@pytest.fixture(scope="session")
def not_an_image(tmp_path_factory) -> Path:
    """A text file renamed .png, as a user might upload by mistake."""
    path = tmp_path_factory.mktemp("bad-upload") / "holiday.png"
    path.write_text("This is a shopping list, not a picture.\nmilk\neggs\n", encoding="utf-8")
    return path
