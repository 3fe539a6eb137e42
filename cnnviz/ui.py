"""The Gradio app: components, tabs, thin handlers, and user mistakes turned into gr.Error.

The only module that imports gradio. Public endpoints: ``/architecture``, ``/filters``,
``/feature_maps``; everything else is wired as private events.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import os
import re
import shutil
import threading
import uuid
from collections import deque
from pathlib import Path

import gradio as gr
from fastapi import HTTPException
from gradio import utils as gradio_utils
from gradio.context import LocalContext
from starlette.middleware import Middleware
import pandas as pd

from . import explore, layers, registry, render, server, summary
from .errors import CnnvizError, quoted
from .weights import WeightsOutcome

log = logging.getLogger(__name__)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
EXAMPLE_FILES = frozenset(p.resolve() for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in EXAMPLE_EXTENSIONS)
TABLE_HEADERS = ["layer", "type", "output shape", "kernel", "stride", "params", "MACs"]
CHANNEL_CHOICES = [("first N", "first"), ("top N by mean activation", "top"), ("all", "all")]
MAX_UPLOAD = "20mb"
UPLOAD_QUOTA = int(float(os.environ.get("CNNVIZ_DISK_QUOTA_MB", "1024")) * 2**20)  # uploads + cached outputs
# Grids arrive at (about) the maps' own resolution; the page enlarges them with crisp pixels.
CSS = "#maps-image img, #filters-image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"


class SafeImage(gr.Image):
    """gr.Image that only ever hands over a file this app may open.

    Gradio 6.31 skips its upload-folder check for a payload without ``meta`` and decodes ``data:``
    URLs itself, so the check lives here, at the component boundary: the path must name an existing
    file inside this app's own upload folder (``GRADIO_CACHE``, a private folder per server) or one of
    the shipped examples; URLs of any kind are refused. Nothing is decoded here:
    :func:`cnnviz.open_image` does that, with its byte, pixel and format limits.

    Build it with ``type="filepath", image_mode=None``. (Gradio reads a component's config from its
    constructor arguments, so a subclass cannot set these in its own ``__init__``.)"""

    is_template = True

    def preprocess(self, payload) -> str | None:
        if payload is None:
            return None
        return self.allowed_path(payload.model_dump())

    def allowed_path(self, payload: dict) -> str:
        """The real path of an upload payload ``{"path": ...}``, or a :class:`gr.Error`."""
        if payload.get("url") and not payload.get("path"):
            raise gr.Error(NOT_UPLOADED)
        return allowed_upload(payload.get("path"), Path(self.GRADIO_CACHE))


NOT_UPLOADED = (
    "The image must be a file uploaded to this app (POST /gradio_api/upload, or gradio_client's "
    "handle_file); URLs, data: URLs and server paths are not accepted."
)


def allowed_upload(path: object, upload_folder: Path) -> str:
    """``path`` as a real path when it is a file inside ``upload_folder`` or one of the examples;
    otherwise a :class:`gr.Error` that names neither the path nor the server's folders."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise gr.Error(NOT_UPLOADED)
    real = Path(os.path.realpath(path))
    inside = real.is_relative_to(upload_folder.resolve()) or real in EXAMPLE_FILES
    if not inside or not real.is_file():
        raise gr.Error(NOT_UPLOADED if not inside else "That upload is no longer on the server. Upload the image again.")
    return str(real)


class _Blocks(gr.Blocks):
    """gr.Blocks that checks each call's parameters before Gradio's own processing, so that a raw API
    call with a wrong count or a wrong type gets a sentence instead of an empty error, and no message
    repeats more than ~80 characters of what was sent."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        _check_call(block_fn, inputs)
        return await super().preprocess_data(block_fn, inputs, state, explicit_call)


def _check_call(block_fn, inputs: list) -> None:
    """Raise a :class:`gr.Error` naming the first parameter of ``inputs`` that cannot be processed."""
    names = list(inspect.signature(block_fn.fn).parameters)[: len(block_fn.inputs)]
    names += [f"#{i + 1}" for i in range(len(names), len(block_fn.inputs))]  # every input is checked
    if not isinstance(inputs, list) or len(inputs) != len(block_fn.inputs):
        sent = len(inputs) if isinstance(inputs, list) else 0
        where = f"The /{block_fn.api_name} endpoint" if block_fn.api_name else "This event"
        raise gr.Error(
            f"{where} takes {len(names)} parameters, in this order: {', '.join(names)}; "
            f"{sent} {'was' if sent == 1 else 'were'} sent."
        )
    for name, component, value in zip(names, block_fn.inputs, inputs):
        if isinstance(component, SafeImage) and isinstance(value, dict):
            component.allowed_path(value)  # before Gradio's own file handling, which has gaps
        problem = _parameter_problem(component, value)
        if problem:
            raise gr.Error(f"Parameter '{name}' ({component.label}) {problem}, not {quoted(value)}.")


def _parameter_problem(component, value) -> str | None:
    """What is wrong with ``value`` for ``component`` (e.g. "must be a number"), or None."""
    if isinstance(component, gr.Image):
        return None if value is None or isinstance(value, dict) else "must be an uploaded file ({\"path\": ...} from /gradio_api/upload)"
    if isinstance(component, (gr.Slider, gr.Number)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a number"
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        if not isinstance(value, str):
            return "must be text"
        valid = [choice[1] for choice in component.choices]
        if not getattr(component, "allow_custom_value", False) and value not in valid:
            return f"must be one of {', '.join(map(repr, valid))}"
    return None


MAX_PER_SESSION = int(os.environ.get("CNNVIZ_MAX_PER_SESSION", "6"))  # queued or running, per page
# Per client address (see README). On a Hugging Face Space every visitor arrives from the proxy's
# address, so there the default is no per-address limit (0), only the per-page one.
MAX_PER_CLIENT = int(os.environ.get("CNNVIZ_MAX_PER_CLIENT", "0" if os.environ.get("SPACE_ID") else "8"))


def _limit_clients(demo: gr.Blocks, per_session: int, per_client: int) -> None:
    """Refuse (HTTP 429, one sentence) a new event when its page or its client address already has
    that many events queued or running, so one client cannot fill the queue for everyone.

    Every queued route (``/queue/join``, ``/call/<name>``) goes through ``Queue.push``; counting and
    pushing happen under one lock. The address is the one uvicorn reports (``X-Forwarded-For`` is
    trusted only from ``FORWARDED_ALLOW_IPS``)."""
    queue = demo._queue
    push = queue.push
    lock = asyncio.Lock()

    async def limited_push(body, request, username):
        async with lock:
            client = request.client.host if request.client else None
            events = [e for e in list(queue.event_ids_to_events.values()) if e.alive]
            same_client = sum(1 for e in events if client and e.request is not None and e.request.client
                              and e.request.client.host == client)
            same_page = sum(1 for e in events if body.session_hash and e.session_hash == body.session_hash)
            if (per_client and same_client >= per_client) or same_page >= per_session:
                raise HTTPException(429, detail=(
                    f"Too many requests from you at once ({max(same_client, same_page)} queued or running); "
                    "wait for them to finish, then try again."
                ))
            return await push(body, request, username)

    queue.push = limited_push


def _stop_reason() -> str | None:
    """Why the current queued event need not finish: ``"gone"`` once Gradio gave up on it (its page
    closed, its client disconnected, or it was cancelled), ``"superseded"`` when it is a page event and
    the same page has sent a newer call of the same handler (queued or running); None otherwise, and
    outside a queued call."""
    event_id, blocks = LocalContext.event_id.get(None), LocalContext.blocks.get(None)
    if event_id is None or blocks is None or blocks._queue is None:
        return None
    queue = blocks._queue
    event = queue.event_ids_to_events.get(event_id)
    if event is None or not event.alive:
        return "gone"
    if event.fn.api_visibility == "public" or not event.session_hash:
        return None  # API callers get every answer they asked for
    for other in list(queue.event_ids_to_events.values()):  # queued or running
        if (other.alive and other.session_hash == event.session_hash and other.fn.fn is event.fn.fn
                and other.enqueue_time > event.enqueue_time):
            return "superseded"
    return None


def _user_errors(fn):
    """Show library errors as their plain sentence; log anything else and show a short message.
    Work nobody waits for any more (a superseded page event, a client gone) stops and changes nothing."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if reason := _stop_reason():
                log.info("%s not started: %s", fn.__name__, reason)
                return gr.skip()  # a newer call of this view is queued, or nobody waits for this one
            with explore.stop_when(_stop_reason):
                return fn(*args, **kwargs)
        except explore.Stopped as e:
            log.info("%s stopped mid-pass: %s", fn.__name__, e)
            return gr.skip()
        except gr.Error:
            raise
        except CnnvizError as e:
            raise gr.Error(str(e)) from e
        except Exception as e:  # a bug or a model that cannot run: keep serving, say what failed
            log.exception("handler %s failed", fn.__name__)
            what = fn.__name__.strip("_").replace("_", " ")
            raise gr.Error(f"Something went wrong in {what}: {type(e).__name__}: {str(e)[:200]}") from e

    return wrapper


def _whole(value, what: str) -> int:
    """A whole number from a component value, or a sentence saying what was wrong."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError) as e:
        raise gr.Error(f"{what} must be a whole number, not {quoted(value)}.") from e


def _weights_notice(loaded: registry.LoadedModel) -> str:
    spec, outcome = loaded.spec, loaded.weights
    head = f"**{spec.display}** · {spec.source} · `{spec.key}` · on {loaded.device.type}"
    if outcome.notice:
        return f"⚠️ {head} — **random weights**: {outcome.notice}"
    if not outcome.pretrained:
        return f"🎲 {head} — random weights (as chosen): filters and maps show an untrained network."
    return f"✅ {head} — pretrained weights: {outcome.source}."


class _OutputFiles:
    """Files handed to Gradio (which copies them into its own cache): written to ``outputs/`` in the
    server's temp folder, only the newest ``keep`` kept, and the whole folder held to the disk quota,
    so a long-running server does not fill its disk. A folder removed under it (a /tmp cleaner) is made
    again on the next write."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._paths: deque[Path] = deque()
        self._lock = threading.Lock()
        self._writes = 0

    @property
    def folder(self) -> Path:
        return Path(gradio_utils.get_upload_folder()) / "outputs"

    def write(self, name: str, data: bytes) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]
        path = self.folder / uuid.uuid4().hex / safe  # never reused: evicting an old file cannot hit a new one
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        with self._lock:
            self._paths.append(path)
            while len(self._paths) > self.keep:
                shutil.rmtree(self._paths.popleft().parent, ignore_errors=True)
            self._writes += 1
            if self._writes % 32 == 0 and server.private_folder() is not None:  # Gradio's copies count too
                server.enforce_quota(server.private_folder(), UPLOAD_QUOTA)
        return str(path)


_OUTPUTS = _OutputFiles()


@_user_errors
def architecture(model: str, weights: str = "pretrained", depth: float = 3):
    """Per-layer table, totals, CSV file and text summary of a model."""
    used = registry.load_model(model, weights).weights  # the model architecture() uses next (cached)
    s = explore.architecture(model, weights, _whole(depth, "Depth"))
    macs_unit, macs = summary.readable_macs(s.total_macs)
    rows = [[r.name, r.type, "×".join(map(str, r.output_shape)), r.kernel, r.stride, r.params, r.macs] for r in s.rows]
    totals = (
        f"**Input** {'×'.join(map(str, s.input_size))} · **parameters** {s.total_params:,} "
        f"({s.trainable_params:,} trainable, {s.non_trainable_params:,} non-trainable) · "
        f"**MACs** {macs:.2f} {macs_unit} · **estimated memory** {s.total_mb:.1f} MB "
        f"(input {s.input_mb:.2f} + forward/backward {s.forward_backward_mb:.1f} + params {s.params_mb:.1f})"
    )
    totals += "\n\n" + _weights_used(used)
    csv_path = _OUTPUTS.write(f"{model}-architecture.csv", s.to_csv().encode())
    return totals, pd.DataFrame(rows, columns=TABLE_HEADERS), csv_path, s.to_text()


@_user_errors
def filters(model: str, weights: str = "pretrained", normalise: str = "layer"):
    """The first convolution's filters as an image, with a caption naming the layer and weight shape."""
    view = explore.filter_grid(model, weights, normalise)
    per = "the whole layer's range" if normalise == "layer" else "each filter's own range"
    colour = "in colour (R, G, B input channels)" if view.filters.weight.shape[1] == 3 else "in grey (mean over input channels)"
    caption = f"`{view.filters.layer}` · {view.filters.description}; drawn {colour}, scaled to {per}.\n\n{_weights_used(view.weights)}"
    return _OUTPUTS.write(f"{model}-filters.png", render.encode(view.image, "png")), caption


@_user_errors
def feature_maps(
    model: str,
    image: str,
    layer: str = "",
    weights: str = "pretrained",
    channels: str = "first",
    n: float = 64,
    colormap: str = "gray",
    normalise: str = "channel",
):
    """The image's feature maps at a layer (qualified module name; empty: first conv) and top-5 predictions."""
    view = explore.feature_maps(model, image, layer or None, weights, channels, _whole(n, "N"), colormap, normalise)
    shown = view.channels.tolist()
    total = view.maps.shape[0]
    if channels == "top":
        which = f"the {len(shown)} channels with the highest mean activation, strongest first: {', '.join(map(str, shown[:16]))}{' …' if len(shown) > 16 else ''}"
    else:
        which = f"channels 0–{len(shown) - 1} of {total}, row by row"
    described = view.layer.label[len(view.layer.name):]  # " · type · C×H×W[, layout][, calls]"
    caption = f"`{view.layer.name}`{described} — {which}; {normalise} normalisation.\n\n{_weights_used(view.weights)}"
    labels = _label_dict(view.predictions)
    grid = _OUTPUTS.write(f"{model}-{view.layer.name}.jpg", render.encode(view.image, "jpeg"))
    return grid, labels, caption


def _weights_used(outcome: WeightsOutcome) -> str:
    """One line for every answer, saying which weights produced it."""
    if outcome.notice:
        return f"⚠️ **Random weights** (pretrained were asked for): {outcome.notice}"
    if not outcome.pretrained:
        return "🎲 Random weights, as chosen: an untrained network."
    return f"✅ Pretrained weights: {outcome.source}."


def _label_dict(predictions) -> dict[str, float] | None:
    """gr.Label's {label: probability}; a label that repeats (ImageNet has two "crane"s) gets its class index."""
    names = [p.label for p in predictions]
    return {(p.label if names.count(p.label) == 1 else f"{p.label} (class {p.index})"): p.probability for p in predictions} or None


def _maps_if_image(model, image, layer, weights, channels, n, colormap, normalise):
    if not image:
        return None, None, "Upload a photo, paste one, or pick an example to see its feature maps."
    return feature_maps(model, image, layer, weights, channels, n, colormap, normalise)


@_user_errors
def _select_model(model: str, weights: str, progress=gr.Progress(track_tqdm=True)):
    loaded = registry.load_model(model, weights)
    found = layers.list_layers(loaded)
    default = layers.get_layer(loaded, None).name
    choices = [(layer.label, layer.name) for layer in found]
    note = layers.listing_note(loaded)
    return _weights_notice(loaded) + (f"\n\nℹ️ {note}" if note else ""), gr.Dropdown(choices=choices, value=default)


@_user_errors
def _startup(progress=gr.Progress(track_tqdm=True)):
    """Open on the default model when its pretrained weights can be had, else on the bundled offline model."""
    default = registry.load_model(registry.DEFAULT_MODEL, "pretrained")
    if default.weights.pretrained:
        return registry.DEFAULT_MODEL, ""
    offline = registry.get_spec(registry.OFFLINE_MODEL)
    return registry.OFFLINE_MODEL, (
        f"ℹ️ {default.weights.notice} So the app opened on **{offline.display}**, whose ImageNet weights ship "
        f"with the app. {default.spec.display} is still in the list, with random weights."
    )


def _example_paths() -> list[list[str]]:
    return [[str(p)] for p in sorted(EXAMPLE_FILES)]


def build_demo() -> gr.Blocks:
    """Build the app. Nothing is loaded until a page opens (then the default model)."""
    model_choices = [(spec.label, spec.key) for spec in registry.curated_specs()]
    gr.set_static_paths(sorted(EXAMPLE_FILES))  # examples are served in place, never copied to the cache
    with _Blocks(title="CNN Explorer", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# 🔬 CNN Explorer\nWhat a convolutional network is made of and what it sees: its layers, "
            "its first-layer filters, and the feature maps of your own photo at any layer."
        )
        with gr.Row():
            model = gr.Dropdown(
                model_choices, value=None, label="Model", allow_custom_value=True, scale=3,
                info="Pick one, or type any torchvision name (resnet34) or timm name (timm/resnet50.a1_in1k).",
            )
            weights = gr.Radio(list(registry.WEIGHT_CHOICES), value="pretrained", label="Weights", scale=1)
        banner = gr.Markdown(elem_id="startup-banner")
        notice = gr.Markdown(elem_id="weights-notice")
        with gr.Tabs():
            with gr.Tab("Architecture", id="architecture"):
                depth = gr.Slider(1, explore.MAX_DEPTH, value=3, step=1, label="Depth (1 = top-level blocks)")
                totals = gr.Markdown(elem_id="arch-totals")
                table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, max_height=520, elem_id="arch-table")
                csv_file = gr.File(label="Download CSV", elem_id="arch-csv")
                with gr.Accordion("Text summary (torchinfo style)", open=False):
                    text = gr.Code(language=None, label="Summary", elem_id="arch-text")
            with gr.Tab("Filters", id="filters"):
                filter_norm = gr.Radio(
                    [("whole layer", "layer"), ("per filter", "filter")], value="layer", label="Normalise"
                )
                filter_caption = gr.Markdown(elem_id="filters-caption")
                filter_image = gr.Image(
                    label="First-layer filters", type="filepath", interactive=False, height=640,
                    buttons=["download", "fullscreen"], elem_id="filters-image",
                )
            with gr.Tab("Feature maps", id="feature-maps"):
                with gr.Row():
                    with gr.Column(scale=1):
                        image = SafeImage(
                            type="filepath", image_mode=None, sources=["upload", "clipboard"],
                            label="Your image", elem_id="input-image",
                        )
                        gr.Examples(_example_paths(), inputs=[image], label="Examples")
                        layer = gr.Dropdown([], value="", label="Layer", allow_custom_value=True, elem_id="layer-select")
                        channels = gr.Radio(CHANNEL_CHOICES, value="first", label="Channels")
                        n = gr.Slider(1, 512, value=64, step=1, label="N")
                        colormap = gr.Dropdown(list(render.COLORMAPS), value="gray", label="Colormap")
                        map_norm = gr.Radio(
                            [("per channel", "channel"), ("per layer", "layer")], value="channel", label="Normalise"
                        )
                    with gr.Column(scale=2):
                        maps_caption = gr.Markdown(elem_id="maps-caption")
                        maps_image = gr.Image(
                            label="Feature maps", type="filepath", interactive=False, height=640,
                            buttons=["download", "fullscreen"], elem_id="maps-image",
                        )
                        predictions = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="predictions")

        # One concurrency group: at most 2 handlers run at once in all (the queue's default limit).
        arch_io = dict(inputs=[model, weights, depth], outputs=[totals, table, csv_file, text], concurrency_id="work")
        filter_io = dict(inputs=[model, weights, filter_norm], outputs=[filter_image, filter_caption], concurrency_id="work")
        maps_io = dict(
            inputs=[model, image, layer, weights, channels, n, colormap, map_norm],
            outputs=[maps_image, predictions, maps_caption],
            concurrency_id="work",
        )

        # Public endpoints first, so they keep their names; the UI's own wiring is private.
        depth.release(architecture, **arch_io, api_name="architecture")
        filter_norm.change(filters, **filter_io, api_name="filters")
        api_only = gr.Button(visible=False)  # /feature_maps is strict: no image is an error there
        api_only.click(feature_maps, **maps_io, api_name="feature_maps")

        demo.load(_startup, outputs=[model, banner], api_visibility="private", concurrency_id="work")
        gr.on(
            [model.change, weights.change], _select_model, [model, weights], [notice, layer],
            api_visibility="private", concurrency_id="work",
        ).success(architecture, **arch_io, api_visibility="private").success(
            filters, **filter_io, api_visibility="private"
        ).success(_maps_if_image, **maps_io, api_visibility="private")
        gr.on(  # in the page, controls touched before there is an image show a hint, not an error
            [image.change, layer.select, channels.change, n.release, colormap.change, map_norm.change],
            _maps_if_image, **maps_io, api_visibility="private",
        )
    # api_open=False: every call goes through the queue (Gradio's /run/<name> routes would skip it)
    demo.queue(max_size=int(os.environ.get("CNNVIZ_QUEUE_SIZE", "32")), default_concurrency_limit=2, api_open=False)
    _limit_clients(demo, MAX_PER_SESSION, MAX_PER_CLIENT)
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> gr.Blocks:
    """Build the demo and start serving it in background threads; returns the running demo.

    Raises:
        OSError: the port is taken (Gradio's "Cannot find empty port ...")."""
    folder = server.private_temp_folder()  # app.py made it already; else now, before any component
    demo = build_demo()
    demo.launch(
        server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD, css=CSS,
        prevent_thread_lock=True,
        app_kwargs={"middleware": [
            Middleware(server.BodyLimit),
            Middleware(server.UploadJanitor, folder=folder, quota=UPLOAD_QUOTA),
        ]},
    )
    return demo
