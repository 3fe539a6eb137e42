"""Live webcam on the Feature maps tab: the chosen layer's maps and the top-5 of each camera frame.

How a frame travels, and why it is fast: the browser draws the camera into a canvas and sends it as a
``data:image/jpeg;base64,…`` URL inside the stream event's JSON (``stream_every`` at most, never while
the previous frame is still being answered). :class:`CameraFrame` decodes it in memory (JPEG/PNG/WebP
only, size checked first) into ``uint8[H,W,3]``; :func:`cnnviz.explore.live_maps` runs one pass; the grid
goes back as a JPEG ``data:`` URL inside the answer (:class:`LiveImage`). No frame is written to disk or
fetched as a file: a plain ``gr.Image`` would save each input frame (``type="filepath"``) and each output
grid (always) into Gradio's cache, and the page would fetch every grid with one more request.

Streams have their own concurrency group (:data:`WEBCAM`, ``CNNVIZ_WEBCAM_STREAMS`` at once, 1 by
default) and a time limit (``CNNVIZ_WEBCAM_SECONDS``, 60 by default), so a camera left on neither takes
the slots that the other views share (:data:`cnnviz.ui.common.WORK`) nor holds its own for ever.
"""
from __future__ import annotations

import base64
import binascii
import os
import time
from dataclasses import dataclass

import gradio as gr
from gradio.data_classes import Base64ImageData

from .. import explore
from ..errors import CnnvizError
from .common import PageState, Refusal, label_dict, user_errors, weights_used, whole

WEBCAM = "webcam"  # the streams' own concurrency group, apart from the shared "work" group
STREAMS = int(os.environ.get("CNNVIZ_WEBCAM_STREAMS", "1"))  # live streams served at once
TIME_LIMIT_S = int(os.environ.get("CNNVIZ_WEBCAM_SECONDS", "60"))  # then the stream stops; start it again
STREAM_EVERY_S = 0.05  # the page sends at most 20 frames a second, and never while one is being answered
# Ask the camera for VGA: the models see 224-384 px, and a 1080p frame costs 6x the bytes and decoding.
CAMERA = gr.WebcamOptions(mirror=True, constraints={"video": {"width": {"ideal": 640}, "height": {"ideal": 480}}})
TOP5 = "Top-5 predictions (live)"
TOP5_UNTRAINED = "Top-5 of an untrained network (random weights): guesses that mean nothing"
NOT_A_FRAME = "The camera frame must come from this page's webcam (a data:image/jpeg;base64 URL); files and links are not accepted."
MAX_DATA_URL = explore.MAX_FRAME_BYTES * 4 // 3 + 64  # base64 of the largest frame accepted, plus its header
HINT = "Open the camera, then press the record button: the maps and top-5 follow the camera."


class CameraFrame(gr.Image):
    """gr.Image for a streamed camera that hands over ``uint8[H,W,3]`` decoded in memory.

    It accepts only what the page's webcam sends, a base64 ``data:image/…`` URL; a ``{"path": ...}``
    payload (a file on the server) or an http URL is refused. Gradio's own decoding would open the
    bytes with every Pillow decoder and no size check; :func:`cnnviz.explore.decode_frame` uses only
    JPEG, PNG and WebP and checks the size first. Build it with ``sources=["webcam"], streaming=True``."""

    is_template = True

    def check_payload(self, payload: dict) -> None:
        """Refuse, before Gradio's own file handling sees it, any payload but a ``data:image/`` URL (a
        ``{"path": "/etc/hosts"}`` would otherwise fail inside Gradio with an empty message)."""
        url = payload.get("url")
        if payload.get("path") or not isinstance(url, str) or not url.startswith("data:image/"):
            raise Refusal(NOT_A_FRAME)

    def preprocess(self, payload):
        if payload is None:
            return None
        url = payload.url if hasattr(payload, "url") else None
        self.check_payload({"path": getattr(payload, "path", None), "url": url})
        if len(url) > MAX_DATA_URL:
            raise Refusal(
                f"The camera frame is larger than the {explore.MAX_FRAME_BYTES // 1024:,} KB this app accepts. "
                "Use a lower camera resolution."
            )
        head, _, body = url.partition(",")
        if not head.endswith(";base64"):
            raise Refusal(NOT_A_FRAME)
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as e:
            raise Refusal(NOT_A_FRAME) from e
        try:
            return explore.decode_frame(data)
        except CnnvizError as e:
            raise Refusal(str(e)) from e


class LiveImage(gr.Image):
    """Output gr.Image that sends a JPEG (``bytes``) inline as a ``data:image/jpeg;base64`` URL, so a live
    grid is neither written to Gradio's cache nor fetched by the page with a second request. Anything
    else is handled as by gr.Image."""

    is_template = True

    def postprocess(self, value):
        if isinstance(value, (bytes, bytearray)):
            return Base64ImageData(url="data:image/jpeg;base64," + base64.b64encode(value).decode("ascii"))
        return super().postprocess(value)


@user_errors
def live_frame(model: str, frame, layer: str, weights: str, channels: str, n: float, colormap: str, normalise: str):
    """One camera frame (``uint8[H,W,3]``) → (JPEG grid, top-5, caption). No frame: nothing changes."""
    if frame is None:
        return gr.skip(), gr.skip(), HINT
    start = time.perf_counter()
    view = explore.live_maps(model, frame, layer or None, weights, channels, whole(n, "N"), colormap, normalise)
    jpeg = explore.encode(view.image, "jpeg")
    ms = (time.perf_counter() - start) * 1000
    channels_shown = len(view.channels)
    caption = (
        f"`{view.layer.name}` · {'×'.join(map(str, view.maps.shape))} · {channels_shown} of {view.maps.shape[0]} "
        f"channels · camera {frame.shape[1]}×{frame.shape[0]} · {ms:.0f} ms per frame on the server\n\n"
        f"{weights_used(view.weights)}"
    )
    top5 = gr.Label(label_dict(view.predictions), label=TOP5 if view.weights.pretrained else TOP5_UNTRAINED)
    return jpeg, top5, caption


@dataclass
class Webcam:
    camera: gr.Image
    maps: gr.Image
    predictions: gr.Label
    caption: gr.Markdown


def build(
    state: PageState,
    layer: gr.Dropdown,
    channels: gr.Radio,
    n: gr.Slider,
    colormap: gr.Dropdown,
    normalise: gr.Radio,
) -> Webcam:
    """A "Live webcam" accordion (inside the current column): the camera, the live maps of the chosen
    layer with the tab's channel, N, colormap and normalisation choices, and the live top-5."""
    model, weights = state.model, state.weights
    with gr.Accordion("Live webcam", open=False, elem_id="webcam"):
        camera = CameraFrame(
            sources=["webcam"], streaming=True, type="numpy", label="Camera", webcam_options=CAMERA,
            elem_id="webcam-input",
        )
        caption = gr.Markdown(HINT, elem_id="webcam-caption")
        maps = LiveImage(
            label="Live feature maps", format="jpeg", interactive=False, buttons=["fullscreen"],
            elem_id="webcam-maps",
        )
        predictions = gr.Label(num_top_classes=5, label=TOP5, elem_id="webcam-predictions")
    camera.stream(
        live_frame, inputs=[model, camera, layer, weights, channels, n, colormap, normalise],
        outputs=[maps, predictions, caption], stream_every=STREAM_EVERY_S, time_limit=TIME_LIMIT_S,
        concurrency_limit=STREAMS, concurrency_id=WEBCAM, api_visibility="private", show_progress="hidden",
    )
    return Webcam(camera, maps, predictions, caption)
