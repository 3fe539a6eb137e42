"""What every tab shares: the checked Blocks, the safe image input, per-client limits, stop checks,
error mapping, the output files handed to Gradio, and the weights line every answer carries.

Here is where user mistakes become :class:`gr.Error` sentences and where the public link is guarded
(see README, "What the app accepts and refuses").
"""
from __future__ import annotations

import functools
import html
import inspect
import logging
import math
import os
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import gradio as gr

from .. import cancel, explore, server
from ..cancel import LISTENERS, UNHEARD_GRACE_S
from ..errors import CnnvizError, is_allocation_failure, quoted
from ..explore import WeightsOutcome
from . import gradio_patches

log = logging.getLogger("cnnviz.ui")
# an installed package carries the examples inside (cnnviz/examples, see pyproject.toml); a clone beside it
EXAMPLES_DIR = next(d for d in (Path(__file__).resolve().parents[n] / "examples" for n in (1, 2)) if d.is_dir())
EXAMPLE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
EXAMPLE_FILES = frozenset(p.resolve() for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in EXAMPLE_EXTENSIONS)
MAX_UPLOAD = f"{max(20, math.ceil(explore.CHECKPOINT_LIMIT_MB))}mb"  # checkpoints; images are held to 20 MB when read
UPLOAD_QUOTA = server.DISK_QUOTA  # every file in the server's folder (CNNVIZ_DISK_QUOTA_MB); shares: server.py
# Two lanes, so that a long request cannot starve the cheap views: the views of one forward pass
# (architecture, filters, feature maps, statistics, page loads) run in WORK, 2 at once (the queue's
# default limit); gradients, per-channel passes, feature visualisation and Compare run in HEAVY,
# HEAVY_AT_ONCE at once (1 by default: one heavy request already keeps 2 CPU cores busy).
WORK = "work"
HEAVY_AT_ONCE = int(os.environ.get("CNNVIZ_HEAVY_AT_ONCE", "1"))
HEAVY = dict(concurrency_id="heavy", concurrency_limit=HEAVY_AT_ONCE)  # an event's arguments: **HEAVY


@dataclass
class Refresh:
    """What a tab runs after a model change: its handler and its event's inputs, outputs and group."""

    fn: Callable
    io: dict


@dataclass
class PageState:
    """The page's one state, shared by every tab (the shell builds it; each tab's ``build(state)`` reads
    it): the model and weights chosen at the top, and the photo every tab shows. The address bar mirrors
    it (``?model=…&weights=…&photo=…``; each tab adds its own part, see its ``from_link``)."""

    model: gr.Dropdown
    weights: gr.Radio
    photo: gr.Textbox  # hidden: the shared photo's link name (an example's stem), "" for an upload or none
    collection: gr.Textbox | None = None  # hidden: the collection chosen in the Collection tab (a name, never a path)


@dataclass
class Photo:
    """A tab's photo box and its examples: the shell keeps every tab's box showing the one photo."""

    box: gr.Image
    examples: gr.Examples


def photo_box(label: str, elem_id: str, **kwargs) -> Photo:
    """A photo box (upload or paste) with the app's examples under it."""
    box = SafeImage(type="filepath", image_mode=None, sources=["upload", "clipboard"], label=label, elem_id=elem_id,
                    **kwargs)
    return Photo(box, gr.Examples([[str(p)] for p in sorted(EXAMPLE_FILES)], inputs=[box], label="Examples"))


def layer_dropdown(view: explore.ModelView, value: str) -> gr.Dropdown:
    """A layer picker's update: the model's layers (with their shapes) and ``value`` chosen."""
    return gr.Dropdown(choices=[(info.label, info.name) for info in view.layers], value=value)


def example_name(path: str | None) -> str:
    """The link name of a shipped example (its stem, ``coffee``), or "" for anything else (an upload
    cannot go in a link: only this server holds it, for a while)."""
    real = Path(os.path.realpath(path)) if path else None
    return real.stem if real is not None and real in EXAMPLE_FILES else ""


def example_path(name: str) -> str | None:
    """The shipped example a link names (``photo=coffee``, case-insensitive), or None."""
    wanted = name.strip().lower()
    return next((str(p) for p in sorted(EXAMPLE_FILES) if wanted and p.stem.lower() == wanted), None)


class SafeImage(gr.Image):
    """gr.Image that only ever hands over a file this app may open.

    Gradio 6.31 skips its upload-folder check for a payload without ``meta`` and decodes ``data:``
    URLs itself, so the check lives here, at the component boundary: the path must name an existing
    file inside this app's own upload folder (``GRADIO_CACHE``, a private folder per server) or one of
    the shipped examples; URLs of any kind are refused. Nothing is decoded here:
    :func:`cnnviz.open_image` does that, with its byte, pixel and format limits.

    Build it with ``type="filepath", image_mode=None``. (Gradio reads a component's config from its
    constructor arguments, so a subclass cannot set these in its own ``__init__``.)"""

    is_template = True  # drawn by gr.Image's frontend (Gradio names it after the first base class)
    EXAMPLES = True  # the shipped examples may be named too
    WHAT = "image"

    def preprocess(self, payload) -> str | None:
        if payload is None:
            return None
        return self.check_payload(payload.model_dump())

    def check_payload(self, payload: dict) -> str:
        """The real path of an upload payload, or a :class:`gr.Error`: ``{"path": ...}`` naming a file
        uploaded to this app, or this app's own file URL for it (``…/gradio_api/file=<path>``, what MCP
        clients send after ``upload_file_to_gradio``). A URL is never fetched: only its path is read."""
        path = payload.get("path")
        for candidate in (path, payload.get("url")):
            if isinstance(candidate, str) and candidate.startswith(("http://", "https://")):
                path = own_file_url(candidate)
                break
        return allowed_upload(path, Path(self.GRADIO_CACHE), self.EXAMPLES, self.WHAT)


class SafeFile(gr.File):
    """gr.File with :class:`SafeImage`'s guard (no examples): only a file uploaded to this app is handed
    over (never a server path, a URL or a ``data:`` URL). Build it with ``type="filepath"``, one file."""

    is_template = True
    EXAMPLES = False
    WHAT = "file"
    preprocess = SafeImage.preprocess
    check_payload = SafeImage.check_payload


NOT_UPLOADED = (
    "The image must be uploaded to this app first: send the path that POST /gradio_api/upload answers "
    "(gradio_client's handle_file does this), or this app's own URL for it (…/gradio_api/file=…, what MCP's "
    "upload_file_to_gradio gives). Other URLs, data: URLs and server paths are not accepted."
)


FILE_ROUTE = "/gradio_api/file="


def own_file_url(url: str) -> str | None:
    """The server path in this app's file URL (``http://host/gradio_api/file=/tmp/…/cat.png``), else None.

    >>> own_file_url("http://127.0.0.1:7860/gradio_api/file=/tmp/up/a%20b.png")
    '/tmp/up/a b.png'
    >>> own_file_url("https://evil.example/cat.png") is None
    True
    """
    route = urlsplit(url).path
    return unquote(route[route.index(FILE_ROUTE) + len(FILE_ROUTE):]) if FILE_ROUTE in route else None


def allowed_upload(path: object, upload_folder: Path, examples: bool = True, what: str = "image") -> str:
    """``path`` as a real path when it is a file inside ``upload_folder`` or (``examples``) one of the
    examples; otherwise a :class:`gr.Error` that names neither the path nor the server's folders."""
    refused = NOT_UPLOADED.replace("The image", f"The {what}")
    if not isinstance(path, str) or not path or "\0" in path:
        raise Refusal(refused)
    real = Path(os.path.realpath(path))
    inside = real.is_relative_to(upload_folder.resolve()) or (examples and real in EXAMPLE_FILES)
    if not inside or not real.is_file():
        raise Refusal(refused if not inside else f"That upload is no longer on the server. Upload the {what} again.")
    return str(real)


def check_call(block_fn, inputs: list, state=None) -> None:
    """Raise a :class:`gr.Error` naming the first parameter of ``inputs`` that cannot be processed.

    ``state``: the page's session state, which holds each component as the page's updates left it (a
    dropdown's choices set by an event); without it, the components as built."""
    params = list(inspect.signature(block_fn.fn).parameters.values())[: len(block_fn.inputs)]
    names = [p.name for p in params] + [f"#{i + 1}" for i in range(len(params), len(block_fn.inputs))]  # every input is checked
    if isinstance(inputs, list) and block_fn.api_name and len(params) == len(block_fn.inputs) > len(inputs):
        left_out = params[len(inputs):]  # an endpoint's trailing parameters with defaults may be left out
        if all(p.default is not inspect.Parameter.empty for p in left_out):
            inputs.extend(p.default for p in left_out)
    if not isinstance(inputs, list) or len(inputs) != len(block_fn.inputs):
        sent = len(inputs) if isinstance(inputs, list) else 0
        where = f"The /{block_fn.api_name} endpoint" if block_fn.api_name else "This event"
        raise Refusal(
            f"{where} takes {len(names)} parameters, in this order: {', '.join(names)}; "
            f"{sent} {'was' if sent == 1 else 'were'} sent."
        )
    for name, component, value in zip(names, block_fn.inputs, inputs):
        if state is not None and not component.stateful and component._id in state:
            component = state[component._id]  # this page's copy, as Gradio's own preprocessing reads it
        if hasattr(component, "check_payload") and isinstance(value, dict):
            checked = component.check_payload(value)  # before Gradio's own file handling, which has gaps
            if isinstance(component, (SafeImage, SafeFile)):  # Gradio reads the path checked above, never a URL
                value.update(path=checked, url=None)
            if isinstance(component, SafeFile):  # gr.File's payload must carry meta; an upload checked above may omit it
                value.setdefault("meta", {"_type": "gradio.FileData"})
        problem = parameter_problem(component, value)
        if problem:
            raise Refusal(f"Parameter '{name}' ({component.label}) {problem}, not {quoted(value)}.")


def parameter_problem(component, value) -> str | None:
    """What is wrong with ``value`` for ``component`` (e.g. "must be a number"), or None."""
    if isinstance(component, (gr.Image, gr.File)):
        return None if value is None or isinstance(value, dict) else "must be an uploaded file ({\"path\": ...} from /gradio_api/upload)"
    if isinstance(component, (gr.Slider, gr.Number)):
        if value is None and isinstance(component, gr.Number) and component.value is None:
            return None  # an empty box that starts empty (Feature maps' Channel): the handler decides
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            return "must be a number"
        return _range_problem(component, value)
    if isinstance(component, gr.Dropdown) and component.multiselect:
        valid = [choice[1] for choice in component.choices]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a list of names"
        wrong = [v for v in value if v not in valid]
        if wrong and not getattr(component, "allow_custom_value", False):
            return f"has {quoted(wrong[0])}, which is not one of its {len(valid)} choices"
        return None
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        if not isinstance(value, str):
            return "must be text"
        valid = [choice[1] for choice in component.choices]
        if not getattr(component, "allow_custom_value", False) and value not in valid:
            return f"must be one of {', '.join(map(repr, valid))}" if valid else "has no choices yet"
    return None


def _range_problem(component: gr.Slider | gr.Number, value: float) -> str | None:
    """What is wrong with a finite number for a slider or number box: outside its range, or not whole
    where only whole numbers mean something (said here, before Gradio's own range check, which names
    no parameter, and its rounding, which would silently change the value)."""
    lo, hi = getattr(component, "minimum", None), getattr(component, "maximum", None)
    whole_only = getattr(component, "precision", None) == 0 or (
        isinstance(component, gr.Slider) and float(component.step).is_integer() and float(lo or 0).is_integer()
    )
    if lo is not None and hi is not None:
        span = f"from {lo:g} to {hi:g}"
    else:
        span = f"at least {lo:g}" if lo is not None else f"at most {hi:g}" if hi is not None else ""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"must be {'a whole number ' if whole_only else ''}{span}"
    if whole_only and not float(value).is_integer():
        return f"must be a whole number{' ' + span if span else ''}"
    return None


MAX_PER_SESSION = int(os.environ.get("CNNVIZ_MAX_PER_SESSION", "6"))  # queued or running, per page
# Per client address (see README). On a Hugging Face Space every visitor arrives from the proxy's
# address, so there the default is no per-address limit (0), only the per-page one.
MAX_PER_CLIENT = int(os.environ.get("CNNVIZ_MAX_PER_CLIENT", "0" if os.environ.get("SPACE_ID") else "8"))


def limit_clients(demo: gr.Blocks, per_session: int, per_client: int) -> None:
    """Refuse (HTTP 429, one sentence) a new event when its page or its client address already has
    that many events queued or running, so one client cannot fill the queue for everyone. The address
    is the one uvicorn reports (``X-Forwarded-For`` is trusted only from ``FORWARDED_ALLOW_IPS``)."""

    def refuse(body, request, events) -> str | None:
        client = request.client.host if request.client else None
        same_client = sum(1 for e in events if client and e.request is not None and e.request.client
                          and e.request.client.host == client)
        same_page = sum(1 for e in events if body.session_hash and e.session_hash == body.session_hash)
        if (per_client and same_client >= per_client) or same_page >= per_session:
            return (f"Too many requests from you at once ({max(same_client, same_page)} queued or running); "
                    "wait for them to finish, then try again.")
        return None

    gradio_patches.limit_queue(demo, refuse)


def enqueued_at() -> float | None:
    """When the current queued event arrived (``time.monotonic()``), or None outside a queued call."""
    _, event = gradio_patches.current_event()
    return event.enqueue_time if event is not None else None


def stop_reason(started: float | None = None) -> str | None:
    """Why the current queued event need not finish, or None (always None outside a queued call):

    * ``"deadline"``: it has been in the server longer than :data:`cnnviz.explore.REQUEST_SECONDS`
      (queue wait included): it ends with a sentence;
    * ``"gone"``: Gradio gave up on it (its page closed, it was cancelled), or no result stream for it has
      been open for :data:`cnnviz.cancel.UNHEARD_GRACE_S` since ``started`` (a ``time.monotonic()``
      reading): a raw ``POST /call`` whose result nobody fetches, or a stream the client closed;
    * ``"superseded"``: a page event whose page has sent a newer call of the same handler."""
    queue, event = gradio_patches.current_event()
    if queue is None:
        return None
    if event is None or not event.alive:
        return "gone"
    if time.monotonic() - event.enqueue_time > explore.REQUEST_SECONDS:
        return "deadline"
    keys = tuple(k for k in (event._id, event.session_hash) if k)
    if started is not None and LISTENERS.unheard_for(keys, started) > UNHEARD_GRACE_S:
        return "gone"
    if event.fn.api_visibility == "public" or not event.session_hash:
        return None  # API callers get every answer they asked for
    for other in gradio_patches.queued_events(queue):  # queued or running
        if (other.alive and other.session_hash == event.session_hash and other.fn.fn is event.fn.fn
                and other.enqueue_time > event.enqueue_time):
            return "superseded"
    return None


def past_deadline() -> Refusal:
    """The sentence for a request stopped at its deadline, with how long it waited and ran."""
    _, event = gradio_patches.current_event()
    waited = f" ({time.monotonic() - event.enqueue_time:.0f} s since it arrived)" if event is not None else ""
    return Refusal(
        f"This request took longer than the {explore.REQUEST_SECONDS:g} s one request may take{waited} and was "
        "stopped. Try a lighter view (Grad-CAM instead of Score-CAM, fewer steps, an earlier layer or a smaller "
        "model), or try again when the server is less busy."
    )


class Refusal(gr.Error):
    """A :class:`gr.Error` for a request the app refuses: one log line instead of a traceback, and the
    message shown as text (HTML special characters escaped, since Gradio's toasts render HTML)."""

    def __init__(self, message: str, **kwargs) -> None:
        log.info("refused: %s", " ".join(str(message).split())[:300])
        self.text = str(message)  # as written, for a caption (the toast's message is escaped)
        super().__init__(html.escape(self.text, quote=False), print_exception=False, **kwargs)


def warn(message: str) -> None:
    """A warning toast whose message is shown as text, never as HTML (links in it stay text)."""
    gr.Warning(html.escape(str(message), quote=False))


def markdown_text(text: object) -> str:
    """``text`` for a Markdown caption, shown as itself: Markdown and HTML special characters escaped
    (a label file's ``[login](https://…)`` stays text, not a link).

    >>> print(markdown_text("[a](http://x) <b>*"))
    \\[a\\]\\(http://x\\) &lt;b&gt;\\*
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def user_errors(fn):
    """Show library errors as their plain sentence; log anything else and show a short message.
    Work nobody waits for any more (a superseded page event, a client gone) stops and changes nothing;
    work past its deadline stops with a sentence."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            if reason := stop_reason(started):
                if reason == "deadline":
                    raise past_deadline()
                log.info("%s not started: %s", fn.__name__, reason)
                return gr.skip()  # a newer call of this view is queued, or nobody waits for this one
            with cancel.stop_when(lambda: stop_reason(started)):
                return fn(*args, **kwargs)
        except cancel.Stopped as e:
            if str(e) == "deadline":
                raise past_deadline() from None
            log.info("%s stopped mid-pass: %s", fn.__name__, e)
            return gr.skip()
        except gr.Error:
            raise
        except CnnvizError as e:
            raise Refusal(str(e)) from None
        except Exception as e:  # a bug or a model that cannot run: keep serving, say what failed
            if is_allocation_failure(e):
                raise Refusal(OUT_OF_MEMORY) from None
            log.exception("handler %s failed", fn.__name__)
            what = fn.__name__.strip("_").replace("_", " ").capitalize()
            raise gr.Error(f"{what} failed on this model and input ({type(e).__name__}); the server logged the "
                           "details. Try another layer or model.", print_exception=False) from e

    return wrapper


def in_page(outputs: int, caption: int, cleared: dict[int, object] | None = None):
    """:func:`user_errors` for a page's handler (never an endpoint's: an API caller gets the error): a
    user's mistake (an unknown layer, class or channel, a bad image, a checkpoint that does not fit) keeps
    the last good result. One warning toast, the sentence in output ``caption`` (of ``outputs``) where the
    result is described, every other output unchanged except ``cleared`` ({index: value}: stale text that
    described what failed), one log line and no "Error" badge. A failure that is not the user's (a bug)
    still raises, with its sentence."""

    def decorate(fn):
        checked = user_errors(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return checked(*args, **kwargs)
            except Refusal as e:  # logged once, when it was made
                gr.Warning(e.message)  # already escaped
                shown = [gr.skip()] * outputs
                for index, value in (cleared or {}).items():
                    shown[index] = value
                shown[caption] = f"⚠️ {markdown_text(e.text)}"
                return tuple(shown)

        return wrapper

    return decorate


OUT_OF_MEMORY = ("The server ran out of memory for this request and stopped it. Try a smaller model, an earlier "
                 "layer or a lighter view.")


def whole(value, what: str) -> int:
    """A whole number from a component value (a slider's ``3.0``, a typed ``"3"``), or a sentence saying what
    was wrong: ``2.5`` is refused, not cut to 2 (the library then checks the range, see ``cnnviz.vocab``)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise Refusal(f"{what} must be a whole number, not {quoted(value)}.") from e
    if isinstance(value, bool) or not math.isfinite(number) or number != int(number):
        raise Refusal(f"{what} must be a whole number, not {quoted(value)}.")
    return int(number)



class OutputFiles:
    """Files handed to Gradio (served from where they are: Gradio's cache is this folder): written to
    ``outputs/`` in the server's temp folder, each in a folder of its own.

    Each write reserves its bytes on the disk quota first (``server.disk_quota``: the total and the
    visitor's share); over either, a :class:`gr.Error` sentence and nothing written. Nothing is ever
    deleted to make room: a page may still show or offer any file it was given. Files leave by age
    (Gradio's ``delete_cache``; the quota's ``expire`` for files Gradio never took over). A folder
    removed under it (a /tmp cleaner) is made again on the next write. ``quota``: the one to hold
    (default: the served app's; none in a notebook or tests, where nothing is held)."""

    def __init__(self, quota: server.DiskQuota | None = None) -> None:
        self._quota = quota

    @property
    def folder(self) -> Path:
        return Path(self._quota.folder if self._quota else gradio_patches.upload_folder()) / "outputs"

    @property
    def quota(self) -> server.DiskQuota | None:
        return self._quota or server.disk_quota(None, UPLOAD_QUOTA)

    def write(self, name: str, data: bytes) -> str:
        """Write ``data`` as a new file named after ``name``; its path.

        Raises:
            gr.Error: the bytes do not fit the disk quota (the total, or the visitor's share)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]
        path = self.folder / uuid.uuid4().hex / safe  # never reused
        quota = self.quota
        try:
            reservation = quota.reserve(len(data), gradio_patches.current_client_host(), "result") if quota else None
        except server.DiskFull as e:
            raise Refusal(str(e)) from None
        written = False
        try:
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
            written = True
        finally:
            if not written:
                shutil.rmtree(path.parent, ignore_errors=True)
            if reservation is not None:
                quota.release(reservation, [path] if written else [])
        return str(path)


OUTPUTS = OutputFiles()


def add_collection(zip_path: str) -> str:
    """Extract an uploaded zip of images into ``collections/`` of the server's folder (beside the outputs)
    and return its collection name (``upload/<digest>``). The entries' declared unpacked bytes are reserved
    on the disk quota first (the total and the visitor's share); over either, a sentence and nothing
    extracted. The library checks every entry (paths, sizes, ratios) and refuses a bad zip with a sentence.

    Raises:
        Refusal: the quota is full, or the zip is refused (its sentence)."""
    quota = OUTPUTS.quota
    parent = OUTPUTS.folder.parent / "collections"
    try:
        with zipfile.ZipFile(zip_path) as archive:
            size = sum(info.file_size for info in archive.infolist() if not info.is_dir())
    except (zipfile.BadZipFile, OSError) as e:
        raise Refusal("That file is not a readable .zip. Upload a zip of images (one folder per class gives labels).") from e
    try:
        reservation = quota.reserve(size, gradio_patches.current_client_host(), "collection") if quota else None
    except server.DiskFull as e:
        raise Refusal(str(e)) from None
    made: list[Path] = []
    try:
        name = explore.add_collection_zip(zip_path, parent)
        made = [p for p in explore.collection_folder(name).rglob("*") if p.is_file()]
        return name
    except CnnvizError as e:
        raise Refusal(str(e)) from None
    finally:
        if reservation is not None:
            quota.release(reservation, made)



def weights_used(outcome: WeightsOutcome) -> str:
    """One line for every answer, saying which weights produced it."""
    if outcome.notice:
        return f"⚠️ **Random weights** (pretrained were asked for): {outcome.notice}"
    if not outcome.pretrained:
        return "🎲 Random weights, as chosen: an untrained network."
    return f"✅ Pretrained weights: {outcome.source}."


def label_dict(predictions) -> dict[str, float] | None:
    """gr.Label's {label: probability}; a label that repeats (ImageNet has two "crane"s) gets its class index."""
    names = [p.label for p in predictions]
    return {(p.label if names.count(p.label) == 1 else f"{p.label} (class {p.index})"): p.probability for p in predictions} or None


PROJECTION_CHOICES = [("guided backpropagation", "guided_backprop"), ("deconvnet", "deconvnet")]


def projection_outputs(model, image, layer, channel, method, weights) -> tuple[str, str]:
    """(picture file, caption) of a Zeiler–Fergus projection: the channel's strongest unit taken back to the
    pixels, beside the part of the picture it covers (Attribution's /projection and Feature maps' section)."""
    view = explore.projection(model, image, layer or "", whole(channel, "Channel"), method, weights)
    row, col = view.position
    top, left, bottom, right = view.box
    if view.silent:  # no strongest unit to speak of: say so, not "row 0, column 0, activation 0"
        caption = f"`{view.layer.name}`: {view.note}\n\n{weights_used(view.weights)}"
        return OUTPUTS.write(f"{model}-{view.layer.name}-{view.channel}-{method}.png", explore.encode(view.image, "png")), caption
    caption = (
        f"Channel **{view.channel}** of `{view.layer.name}`, its strongest unit (row {row}, column {col}, activation "
        f"{view.activation:.4g}) taken back to the pixels by {dict((v, k) for k, v in PROJECTION_CHOICES)[method]}: left, "
        f"what in the picture drives this unit (grey: no effect); right, the part of the picture it covers "
        f"(rows {top}–{bottom - 1}, columns {left}–{right - 1}). {view.note}\n\n{weights_used(view.weights)}"
    )
    return OUTPUTS.write(f"{model}-{view.layer.name}-{view.channel}-{method}.png", explore.encode(view.image, "png")), caption
