"""A public link one visitor cannot take down: work nobody waits for stops, a long request cannot starve
the cheap views, every refusal is one log line, and what a visitor sends is echoed as text only.

A test that stops its server or sets a short deadline starts its own ``python app.py`` (the ``start``
fixture); the two abandoned heavy calls share one server with a long deadline (``long_app``), and the rest
use the session's shared server, reading only what its log gained during the test."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from .conftest import EXAMPLES, App, Raw
from .test_lifecycle import LogSince, _dependency, _join, _wait_for_any_log
from .test_public_link import assert_sentence, maps_args

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A minute or more of work on 2 CPU cores, under the budgets of a server started with a long deadline.
LONG_VISUALIZATION = ["resnet18", "layer4", 0, 2048, "random", 0]  # model, layer, channel, steps, weights, seed
LONG = {"CNNVIZ_REQUEST_S": "900"}


def scorecam_args(image: dict) -> list:
    """/attribution's parameters: model, image, method, target, layer, weights, opacity."""
    return ["resnet18", image, "scorecam", "", "layer4", "random", 0.5]  # 512 masked copies of the photo


@pytest.fixture(scope="module")
def long_app(tmp_path_factory):
    """One server with a long deadline for the tests whose heavy call is abandoned (each ends with the
    lane free again: the abandoned call stopped)."""
    app = App(tmp_path_factory.mktemp("long-app"), env=LONG).serving()
    yield app
    app.stop()


def test_a_call_whose_result_nobody_fetches_stops_and_frees_its_lane(long_app):
    log = LogSince(long_app)
    raw = Raw(long_app.url)
    response = raw.post("channel_visualization", {"data": LONG_VISUALIZATION})  # its result is never fetched
    assert response.status_code == 200, response.text
    _wait_for_any_log(log, ["channel_visualization stopped mid-pass: gone"], timeout=90)
    status, outputs = raw.call("channel_visualization", ["resnet18", "layer4", 0, 4, "random", 0])
    assert status == "complete", outputs  # the heavy lane is free again


def test_a_call_whose_stream_the_client_closes_stops(long_app):
    log = LogSince(long_app)
    raw = Raw(long_app.url)
    event_id = raw.post("channel_visualization", {"data": LONG_VISUALIZATION}).json()["event_id"]
    with raw.http.stream("GET", f"{raw.url}/gradio_api/call/channel_visualization/{event_id}"):
        time.sleep(3)  # reading, then hanging up mid-request
    _wait_for_any_log(log, ["channel_visualization stopped mid-pass: gone"], timeout=90)


def test_cheap_views_answer_while_heavy_requests_run(start):
    """A Score-CAM and a feature visualisation of the same model are running (their clients wait for
    them); a feature-map call of that model is answered before either of them: it neither queues behind
    them nor waits for the model (Score-CAM runs on its own copy, feature visualisation takes the model
    one step at a time)."""
    app = start(env=LONG).serving()
    raw = Raw(app.url)
    image = {"path": raw.upload(EXAMPLES / "cat.png"), "meta": {"_type": "gradio.FileData"}}
    finished: dict[str, tuple[float, object]] = {}

    def heavy(name: str, args: list) -> None:
        try:
            outcome = Raw(app.url).call(name, args)
        except httpx.HTTPError:  # the server stopped at the end of the test
            return
        finished[name] = time.monotonic(), outcome

    threads = [threading.Thread(target=heavy, args=("attribution", scorecam_args(image)), daemon=True),
               threading.Thread(target=heavy, args=("channel_visualization", LONG_VISUALIZATION), daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(5)  # both sent, one running (the heavy lane takes one at a time by default)
    status, outputs = raw.call("feature_maps", maps_args(image))
    answered = time.monotonic()
    assert status == "complete", outputs
    assert not finished, f"the heavy requests ended first: {finished}, so the test shows nothing"
    assert all(thread.is_alive() for thread in threads)
    app.stop()  # the heavy calls end with the server
    assert answered < min((t for t, _ in finished.values()), default=float("inf"))


def test_every_refusal_is_one_log_line_and_a_sentence(server):
    log = LogSince(server)
    raw = Raw(server.url)
    refusals = [
        ("feature_maps", maps_args({"path": "/etc/passwd"})),
        ("feature_maps", maps_args({"url": "data:image/png;base64,AAAA"})),
        ("architecture", ["resnet5O", "random", 3]),
        ("architecture", ["resnet18", "random", 99]),
    ]
    for name, args in refusals:
        assert_sentence(raw.call(name, args))
    time.sleep(1)
    logged = log.output()
    assert "Traceback" not in logged, logged[-3000:]
    lines = [line for line in logged.splitlines() if "refused" in line]
    assert len(lines) == len(refusals), logged[-3000:]
    assert all(len(line) < 500 for line in lines)


@pytest.mark.parametrize("frame", [{"path": "/etc/hosts"}, {"path": "/etc/hosts", "meta": {"_type": "gradio.FileData"}}],
                         ids=["meta-less", "with-meta"])
def test_a_webcam_frame_naming_a_server_file_gets_the_sentence(app_url, frame):
    with httpx.Client(timeout=60) as http:
        config = http.get(f"{app_url}config").json()
        stream = _dependency(config, trigger=("webcam-input", "stream"))
        session = f"webcam-hostile-{len(frame)}"
        _join(http, app_url, stream, ["resnet18", frame, "conv1", "random", "first", 8, "gray",
                                      "channel"], session)
        message = None
        with http.stream("GET", f"{app_url}gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if line.startswith("data: ") and "process_completed" in line:
                    message = json.loads(line[6:])
                    break
    assert message is not None and not message["success"]
    assert_sentence(("error", message["output"].get("error")), "webcam")


def test_a_link_value_with_html_shows_as_text(app_url, chromium):
    """``?view=<a href=…>`` in a link: the warning toast shows the characters, and no link element."""
    page = chromium.new_page()
    try:
        page.goto(f"{app_url}?tab=compare&view=<a href=https://evil.example/login>log in</a>", timeout=120_000)
        page.wait_for_function("() => document.querySelectorAll('.toast-body.warning').length >= 1", timeout=120_000)
        toast = page.locator(".toast-body.warning").first
        assert "<a href=https://evil.example/login>" in toast.inner_text()
        assert page.locator(".toast-body a[href*='evil.example']").count() == 0
    finally:
        page.close()


def test_a_request_past_its_deadline_ends_with_a_sentence(start):
    """With a 3 s deadline, EfficientNet-B7's first feature maps (building the model, then a 600 px pass:
    several seconds on any CPU) end with the deadline's sentence, and a request queued behind it that has
    waited past its own deadline too is dropped with it, not run."""
    app = start(env={"CNNVIZ_REQUEST_S": "3"}).serving()
    image = {"path": Raw(app.url).upload(EXAMPLES / "cat.png"), "meta": {"_type": "gradio.FileData"}}
    outcomes: list = []

    def call() -> None:
        outcomes.append(Raw(app.url).call("feature_maps", maps_args(image, model="efficientnet_b7", layer="")))

    threads = [threading.Thread(target=call) for _ in range(3)]  # 2 run at once, the third waits
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert_sentence(outcome, "longer than the 3 s one request may take")
