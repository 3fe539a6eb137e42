"""The live webcam: :func:`cnnviz.explore.live_maps` against an independent computation, the frame
checks (bad frames get a sentence, never a traceback), and the UI's in-memory frame path.

The reference hooks the layer itself (a plain ``register_forward_hook``) on the same frame put through
the model's own transform, and takes the top-5 from the same pass's logits with its own softmax."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio.data_classes import ImageData
from PIL import Image

import cnnviz
from cnnviz import explore
from cnnviz.errors import InvalidImageError, InvalidOptionError
from cnnviz.ui import webcam

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"



def camera_frame(width: int = 320, height: int = 240) -> np.ndarray:
    """A webcam-like frame: the cat photo squeezed to 4:3, ``uint8[H,W,3]``."""
    return np.asarray(Image.open(EXAMPLES / "cat.png").convert("RGB").resize((width, height)))


def reference(model: str, frame: np.ndarray, layer: str) -> tuple[torch.Tensor, list[int]]:
    """The layer's output ``[C,H,W]`` and the top-5 class indices, computed here with a hook of our own."""
    loaded = cnnviz.load_model(model, "random")
    x = loaded.transform(Image.fromarray(frame)).unsqueeze(0)
    module = dict(loaded.model.named_modules())[layer]
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        loaded.model.eval()
        with torch.no_grad():
            logits = loaded.model(x)
    finally:
        handle.remove()
    top5 = torch.softmax(logits[0], 0).topk(5).indices.tolist()
    return seen[0][0], top5


@pytest.mark.parametrize("model, layer", [("resnet18", "conv1"), ("resnet18", "layer2"), ("alexnet", "features.0")])
def test_live_maps_are_the_layer_output_of_the_transformed_frame(model, layer):
    frame = camera_frame()
    view = explore.live_maps(model, frame, layer, weights="random")
    maps, top5 = reference(model, frame, layer)
    assert view.layer.name == layer
    assert view.maps.shape == maps.shape
    torch.testing.assert_close(view.maps, maps, rtol=1e-4, atol=1e-5)
    assert [p.index for p in view.predictions] == top5
    assert view.image.dtype == np.uint8 and view.image.ndim == 3 and view.image.shape[2] == 3


def test_first_conv_by_default_and_the_grid_is_the_feature_maps_view():
    """No layer → the first convolution; the live grid is the Feature maps view's grid of the same picture."""
    frame = camera_frame()
    live = explore.live_maps("resnet18", frame, None, "random", channels="top", n=16, colormap="viridis")
    still = explore.feature_maps("resnet18", frame, None, "random", channels="top", n=16, colormap="viridis")
    assert live.layer.name == "conv1"
    assert live.channels.tolist() == still.channels.tolist()
    np.testing.assert_array_equal(live.image, still.image)


@pytest.mark.parametrize("frame, words", [
    (np.zeros((240, 320, 3), np.float32), "8-bit"),
    (np.zeros((1, 1, 3), np.uint8), "1×1"),
    (np.zeros((240, 320, 2), np.uint8), "height×width×3"),
    (np.broadcast_to(np.uint8(0), (5000, 5000, 3)), "5000×5000"),  # no memory: a zero-stride view
    ([[0, 0, 0]], "not list"),
    (None, "not NoneType"),
])
def test_bad_frames_get_a_sentence(frame, words):
    with pytest.raises(InvalidImageError, match=words):
        explore.live_maps("resnet18", frame, None, "random")


def test_bad_options_get_a_sentence():
    with pytest.raises(InvalidOptionError, match="colormap"):
        explore.live_maps("resnet18", camera_frame(), None, "random", colormap="jet")


def jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_decode_frame_uses_only_jpeg_png_webp_and_checks_size_first():
    frame = camera_frame(64, 48)
    assert explore.decode_frame(jpeg(frame)).shape == (48, 64, 3)
    gif = io.BytesIO()
    Image.fromarray(frame).save(gif, format="GIF")
    with pytest.raises(InvalidImageError, match="JPEG, PNG or WebP"):
        explore.decode_frame(gif.getvalue())
    with pytest.raises(InvalidImageError, match="JPEG, PNG or WebP"):
        explore.decode_frame(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    tall = io.BytesIO()
    Image.new("L", (16, 5000)).save(tall, format="PNG")  # a few KB that would decode to 5000 rows
    with pytest.raises(InvalidImageError, match="16×5000"):
        explore.decode_frame(tall.getvalue())
    with pytest.raises(InvalidImageError, match="empty"):
        explore.decode_frame(b"")


def data_url(data: bytes, mime: str = "image/jpeg") -> ImageData:
    return ImageData(url=f"data:{mime};base64," + base64.b64encode(data).decode("ascii"))


@pytest.fixture(scope="module")
def components():
    with gr.Blocks():
        camera = webcam.CameraFrame(sources=["webcam"], streaming=True, type="numpy")
        output = webcam.LiveImage(format="jpeg")
    return camera, output


def test_camera_frame_decodes_data_urls_in_memory_and_refuses_files_and_links(components, tmp_path):
    camera, _ = components
    frame = camera_frame(64, 48)
    decoded = camera.preprocess(data_url(jpeg(frame)))
    assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frame.astype(int)).mean() < 4  # JPEG loss only
    picture = tmp_path / "frame.png"
    Image.fromarray(frame).save(picture)
    for payload in (ImageData(path=str(picture)), ImageData(url="https://example.com/x.jpg"),
                    ImageData(url="data:image/jpeg,notbase64"), ImageData(url="data:image/jpeg;base64,@@@@")):
        with pytest.raises(gr.Error, match="webcam"):
            camera.preprocess(payload)
    with pytest.raises(gr.Error, match="1×1"):
        camera.preprocess(data_url(jpeg(np.zeros((1, 1, 3), np.uint8))))
    assert camera.preprocess(None) is None


def test_live_image_sends_the_jpeg_inline(components):
    _, output = components
    sent = output.postprocess(b"\xff\xd8jpeg")
    assert sent.url == "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8jpeg").decode()
    assert not hasattr(sent, "path") or sent.path is None


def test_handler_answers_a_frame_and_turns_bad_frames_into_sentences():
    grid, top5, caption = webcam.live_frame("resnet18", camera_frame(), "", "random", "first", 8, "auto", "channel")
    assert Image.open(io.BytesIO(grid)).format == "JPEG"
    assert len(top5.value["confidences"]) == 5 and "untrained" in top5.label
    assert caption.startswith("`conv1`") and "8 of 64 channels" in caption and "Random weights" in caption
    with pytest.raises(gr.Error, match="8-bit"):
        webcam.live_frame("resnet18", np.zeros((240, 320, 3), np.float64), "", "random", "first", 8, "auto", "channel")
    with pytest.raises(gr.Error, match="no (module|layer)"):
        webcam.live_frame("resnet18", camera_frame(), "layer9", "random", "first", 8, "auto", "channel")


def test_stream_has_its_own_limits():
    """Its own concurrency group (not the shared "work" one), a bounded time limit, private, in the app."""
    from cnnviz.ui import build_demo
    from cnnviz.ui.common import WORK

    demo = build_demo()
    streams = [fn for fn in demo.fns.values() if fn.connection == "stream"]
    assert len(streams) == 1
    stream = streams[0]
    assert stream.fn.__wrapped__ is webcam.live_frame.__wrapped__
    assert stream.concurrency_id == webcam.WEBCAM != WORK
    assert stream.concurrency_limit == webcam.STREAMS >= 1
    assert 0 < stream.time_limit <= 600 and stream.stream_every == webcam.STREAM_EVERY_S
    assert stream.api_visibility == "private"


def test_the_largest_frame_accepted_fits_in_one_request_body():
    """A frame the app accepts must also pass the server's body limit on its way in (base64 in the JSON
    the page sends): no frame gets HTTP 413 where the sentence promises more."""
    import json

    from cnnviz import server

    frame = "data:image/jpeg;base64," + base64.b64encode(bytes(explore.MAX_FRAME_BYTES)).decode()
    body = {"data": ["timm/tf_efficientnet_lite0", {"url": frame, "path": None, "meta": {"_type": "gradio.FileData"}},
                     "blocks.2.0.conv_dw", "pretrained", "first", 64, "viridis", "channel"],
            "event_data": None, "fn_index": 999, "trigger_id": 999, "session_hash": "a" * 32}
    assert len(json.dumps(body)) <= server.BodyLimit(None).limit
