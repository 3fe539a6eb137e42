"""The Collection tab: dataset examples. A collection of images (the operator's ``--data NAME=DIR``, or a
zip uploaded here) goes through the model once (the atlas, a background job); then each channel's
statistics over the whole collection and its most (least, random) activating images.

No request names a server path: the page and the endpoints take collection NAMES only.

Public endpoints: ``/atlas``, ``/atlas_job``, ``/dataset_examples``, ``/collection_table``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import explore
from ..errors import CnnvizError, quoted
from .common import (
    OUTPUTS,
    WORK,
    PageState,
    Refresh,
    Refusal,
    SafeFile,
    add_collection,
    in_page,
    markdown_text,
    user_errors,
    warn,
    weights_used,
    whole,
)
from .gradio_patches import document_as_text

ORDER_CHOICES = [("most activating", "top"), ("least activating", "bottom"), ("random sample", "random")]
NO_COLLECTION = ("Choose a collection (the server's, started with `--data NAME=DIR`) or upload a .zip of images "
                 "(one folder per class gives labels), then build its atlas.")
NO_LAYER = "Choose a layer the atlas was built for (building one chooses its first layer)."
TABLE_HEADERS = ["channel", "mean", "max", "active share", "dead over the collection", "top class", "selectivity"]
POLL_S = 1.0  # how often the page asks a running job where it is


def _folder(collection: str) -> Path:
    """The folder of the collection NAMED ``collection`` (never a path from the request)."""
    if not isinstance(collection, str) or not collection.strip():
        raise Refusal("Choose a collection first: " + ", ".join(explore.collections()[:10]) if explore.collections()
                      else NO_COLLECTION)
    return explore.collection_folder(collection.strip())


def _sentence(e: Exception, collection: str) -> str:
    """A library sentence with the collection's folder (a server path) replaced by its name."""
    text = str(e)
    try:
        folder = str(explore.collection_folder(collection))
    except CnnvizError:
        return text
    return text.replace(f"'{folder}'", quoted(collection)).replace(folder, collection)


def _not_computed(model: str, layer: str, collection: str) -> str:
    return (f"No atlas of `{markdown_text(layer)}` for `{markdown_text(model)}` with these weights in "
            f"{markdown_text(collection)} yet: press **Build the atlas** in the Collection tab (with this layer, or none "
            "chosen for each stage's output).")


def _layers(layers) -> list[str]:
    """The Layers box (a list) or the API's text ("layer3, layer4") as names; empty: each stage's output."""
    if isinstance(layers, str):
        layers = layers.split(",")
    return [str(name).strip() for name in (layers or []) if str(name).strip()]


def _job_lines(job: explore.AtlasJob) -> tuple[str, str]:
    """(the job's one line, its report: skipped files with their reasons in a list)."""
    report = job.report
    if report is None or not report.skipped:
        return job.describe(), ""
    listed = "\n".join(f"- `{markdown_text(s.path)}`: {markdown_text(s.reason)}" for s in report.skipped[:200])
    more = f"\n- … and {len(report.skipped) - 200} more" if len(report.skipped) > 200 else ""
    return job.describe(), f"**{len(report.skipped)} file(s) skipped:**\n{listed}{more}"


# ----------------------------------------------------------------------------------------- endpoints


def _start(model, weights, collection, layers, k) -> explore.AtlasJob:
    _folder(collection)  # a name, or a sentence naming the valid ones
    try:
        return explore.start_atlas(model, collection.strip(), layers=_layers(layers) or None, weights=weights,
                                   k=whole(k, "k (examples kept per channel)"))
    except CnnvizError as e:
        raise Refusal(_sentence(e, collection)) from None


@user_errors
def atlas(model: str, weights: str = "pretrained", collection: str = "", layers: str = "", k: float = 9):
    """Start the atlas of a collection in the background (or find the same one running or done): the model's
    pass over every image, which keeps each channel's statistics and its top, bottom and random examples.
    Poll /atlas_job with the id.

    Args:
        model: a curated key, a torchvision name or timm/<name>.
        weights: "pretrained" or "random".
        collection: a collection's NAME as the server lists it (its --data NAME, or upload/<digest>); never a path.
        layers: layer names separated by commas ("layer3, layer4"); empty: each stage's output.
        k: examples kept per channel and order, 1 to 25.
    """
    job = _start(model, weights, collection, layers, k)
    return job.id, job.state, job.describe()


@user_errors
def atlas_job(job_id: str):
    """Where an atlas job is: its state ("queued", "running", "done", "stopped" or "failed"), one line (images
    done, images/s, time left; when done, what was stored) and the files it skipped with why.

    Args:
        job_id: the id /atlas answered.
    """
    job = explore.atlas_job(str(job_id or "").strip())
    line, skipped = _job_lines(job)
    return job.id, job.state, line, skipped


def _examples(model, weights, collection, layer, channel, k, order) -> explore.ExamplesView:
    if not layer:
        raise Refusal(NO_LAYER)
    folder = _folder(collection)
    try:
        return explore.dataset_examples(model, layer, whole(channel, "Channel"), data=folder, weights=weights,
                                        k=whole(k, "k"), order=order)
    except explore.NotComputedError:
        raise Refusal(_not_computed(model, layer, collection).replace("`", "").replace("**", "")) from None
    except CnnvizError as e:
        raise Refusal(_sentence(e, collection)) from None


def _gallery(view: explore.ExamplesView, model: str) -> list[tuple[str, str]]:
    """The crops as files, captioned "path · value"."""
    return [(OUTPUTS.write(f"{model}-{view.layer}-{view.channel}-{i}.png", explore.encode(ex.crop, "png")),
             f"{ex.path} · {ex.value:.3g}") for i, ex in enumerate(view)]


def _listed(view: explore.ExamplesView) -> list[dict]:
    return [{"path": ex.path, "value": ex.value, "y": ex.y, "x": ex.x, "label": ex.label} for ex in view]


@user_errors
def dataset_examples(model: str, weights: str = "pretrained", collection: str = "", layer: str = "", channel: float = 0,
                     k: float = 9, order: str = "top"):
    """A channel's dataset examples from a built atlas: for each image, the part of the picture the model saw
    around the channel's strongest position, and {path, value, y, x, label}.

    Args:
        model: a curated key, a torchvision name or timm/<name>.
        weights: "pretrained" or "random".
        collection: a collection's NAME as the server lists it; never a path.
        layer: a layer the atlas was built for ("layer4").
        channel: the channel index, from 0 to the layer's channel count minus one.
        k: how many, at most the k the atlas kept.
        order: "top" (most activating), "bottom" (least activating) or "random" (a fixed random sample).
    """
    view = _examples(model, weights, collection, layer, channel, k, order)
    return _gallery(view, model), _listed(view)


def _table(model, weights, collection, layer) -> explore.CollectionTable:
    if not layer:
        raise Refusal(NO_LAYER)
    folder = _folder(collection)
    try:
        return explore.collection_table(model, layer, data=folder, weights=weights)
    except explore.NotComputedError:
        raise Refusal(_not_computed(model, layer, collection).replace("`", "").replace("**", "")) from None
    except CnnvizError as e:
        raise Refusal(_sentence(e, collection)) from None


def _frame(table: explore.CollectionTable) -> pd.DataFrame:
    """The table's rows, numbers to 4 significant digits (the CSV keeps them whole)."""
    frame = pd.DataFrame(table.rows(), columns=TABLE_HEADERS)
    for column in ("mean", "max", "active share", "selectivity"):
        frame[column] = frame[column].map(lambda v: float(f"{v:.4g}"))
    return frame


def _table_caption(table: explore.CollectionTable, collection: str) -> str:
    labelled = ("top class and class selectivity of the rectified map (Morcos et al. 2018: 0 = no preference, 1 = one class only)"
                if table.labels else "no labels (put each class in its own folder for top class and selectivity)")
    return (f"`{table.layer}` over the **whole collection** {markdown_text(collection)} ({table.images:,} images): mean over "
            "every position of every image, max, active share (positions > 0), dead = never above 0 in any image "
            f"(Feature maps' \"dead\" is one photo's); {labelled}. Sort from a column's ⋮ menu.\n\n{weights_used(table.weights)}")


@user_errors
def collection_table(model: str, weights: str = "pretrained", collection: str = "", layer: str = ""):
    """Per-channel statistics of a layer over a whole collection (from its atlas): mean, max, active share,
    dead over the collection, top class and class selectivity.

    Args:
        model: a curated key, a torchvision name or timm/<name>.
        weights: "pretrained" or "random".
        collection: a collection's NAME as the server lists it; never a path.
        layer: a layer the atlas was built for ("layer4").
    """
    table = _table(model, weights, collection, layer)
    return _frame(table), _table_caption(table, collection)


# ------------------------------------------------------------------------------------------ the page


def _view(model, weights, collection, layer, channel, k, order) -> tuple:
    """The page's (table caption, table, CSV, gallery, examples caption, shown): hints, not errors, before
    a collection, a layer or an atlas."""
    if not collection:
        return NO_COLLECTION, None, None, [], "", None
    if not layer:
        return NO_LAYER, None, None, [], "", None
    try:
        table = _table(model, weights, collection, layer)
    except Refusal as e:
        if e.text.startswith("No atlas of"):
            return f"ℹ️ {_not_computed(model, layer, collection)}", None, None, [], "", None
        raise
    csv = OUTPUTS.write(f"{model}-{table.layer}-collection.csv", table.to_csv().encode())
    gallery, caption, shown = _examples_view(model, weights, collection, layer, channel, k, order)
    return _table_caption(table, collection), _frame(table), csv, gallery, caption, shown


def _examples_view(model, weights, collection, layer, channel, k, order) -> tuple:
    view = _examples(model, weights, collection, layer, channel, k, order)
    words = dict((v, w) for w, v in ORDER_CHOICES)[str(view.order)]
    caption = (f"Channel **{view.channel}** of `{view.layer}`: the {len(view)} {words} images of {markdown_text(collection)} "
               f"({view.images:,} in the atlas), each cropped to the part the strongest position sees. Click one to open "
               "it in Feature maps at this layer and channel.")
    shown = {"model": model, "collection": collection, "layer": view.layer, "channel": view.channel,
             "paths": [ex.path for ex in view]}
    return _gallery(view, model), caption, shown


@in_page(outputs=6, caption=0)
def view_page(model, weights, collection, layer, channel, k, order):
    """The table and the examples after the collection, the layer or a model change."""
    return _view(model, weights, collection, layer, channel, k, order)


@in_page(outputs=3, caption=1)
def examples_page(model, weights, collection, layer, channel, k, order):
    """The examples after the channel, the order or k changed."""
    return _examples_view(model, weights, collection, layer, channel, k, order)


@in_page(outputs=4, caption=1)
def build_page(model, weights, collection, layers, k):
    """Build the atlas: start the job; the timer polls it. Returns (job id, status, report, timer)."""
    job = _start(model, weights, collection, layers, k)
    return job.id, job.describe(), "", gr.Timer(active=not job.finished)


@user_errors
def poll(job_id, model, weights, collection, layer, channel, k, order):
    """A timer tick: the job's line; when it has finished, the timer stops and the table and examples of
    its first layer (or the chosen one, when built) are shown. Returns (status, report, timer, layer,
    then :func:`_view`'s outputs)."""
    if not job_id:
        return "", "", gr.Timer(active=False), *(gr.skip(),) * 7
    job = explore.atlas_job(job_id)
    line, skipped = _job_lines(job)
    if not job.finished:
        return line, skipped, gr.skip(), *(gr.skip(),) * 7
    built = job.report.layers if job.report else ()
    shown = layer if layer in built or not built else built[0]
    try:
        view = _view(model, weights, collection, shown, channel, k, order)
    except Refusal as e:
        warn(e.text)
        view = (f"⚠️ {markdown_text(e.text)}", *(gr.skip(),) * 5)
    return line, skipped, gr.Timer(active=False), shown or gr.skip(), *view


@user_errors
def stop_page(job_id):
    """Stop the running job at its next batch (what it saved is kept; building again resumes)."""
    if not job_id:
        return gr.skip()
    return explore.stop_atlas(job_id).describe()


@user_errors
def zip_uploaded(path):
    """A .zip uploaded: extracted (checked by the library) and chosen. A refused zip: a warning toast."""
    if not path:
        return gr.skip()
    try:
        name = add_collection(path)
    except Refusal as e:
        gr.Warning(e.message)
        return gr.skip()
    return gr.Dropdown(choices=explore.collections(), value=name)


def open_example(shown: dict | None, evt: gr.SelectData) -> tuple[str, str, int] | None:
    """The gallery item clicked, as (a copy of its image in the server's outputs, layer, channel), for the
    shell to open in Feature maps; None when nothing is shown. The copy lets the photo boxes accept it."""
    if not shown or evt.index is None or evt.index >= len(shown["paths"]):
        return None
    relative = shown["paths"][evt.index]
    folder = _folder(shown["collection"])
    source = (folder / relative).resolve()
    if not source.is_relative_to(folder.resolve()) or not source.is_file():
        raise Refusal(f"{quoted(relative)} is no longer in the collection.")
    copy = OUTPUTS.write(os.path.basename(relative), source.read_bytes())
    return copy, shown["layer"], shown["channel"]


@user_errors
def refresh(model, weights, layers, layer, collection, channel, k, order):
    """After a model or weights change: the model's layers in both pickers (chosen ones kept where the model
    has them), then the table and examples."""
    view = explore.select_model(model, weights)
    names = [info.name for info in view.layers]
    choices = [(info.label, info.name) for info in view.layers]
    kept = [name for name in _layers(layers) if name in names]
    layer = layer if layer in names else ""
    shown = view_page(model, weights, collection, layer, channel, k, order)
    return gr.Dropdown(choices=choices, value=kept), gr.Dropdown(choices=choices, value=layer), *shown


LINK = ("collection",)  # ?tab=collection&collection=faces


def from_link(params: dict[str, str], model: str, weights: str) -> tuple:
    """The tab's part of a page link: (the Collection picker, with the server's collections as its choices;
    the link's collection chosen when the server has it)."""
    names = explore.collections()
    wanted = params.get("collection", "")
    if wanted and wanted not in names:
        warn(f"The link's collection {quoted(wanted)} is not on this server; collections here: {', '.join(names) or 'none'}.")
        wanted = ""
    return (gr.Dropdown(choices=names, value=wanted or (names[0] if len(names) == 1 else "")),)


@dataclass
class CollectionTab(Refresh):
    collection: gr.Dropdown
    gallery: gr.Gallery
    shown: gr.State  # what the gallery shows (model, collection, layer, channel, paths)
    link_outputs: list


def build(state: PageState) -> CollectionTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh."""
    model, weights = state.model, state.weights
    gr.Markdown("Dataset examples: run the model once over a whole collection of images, then see each channel's "
                "statistics over all of them and the images that drive it hardest.")
    with gr.Row():
        collection = gr.Dropdown(explore.collections(), value="", allow_custom_value=True, label="Collection", scale=2, elem_id="collection-select",
                                 info="The server's collections (cnnviz serve --data NAME=DIR) and the zips uploaded here.")
        upload = SafeFile(label="Or upload a .zip of images", file_types=[".zip"], type="filepath", scale=1, height=120,
                          elem_id="collection-zip")
    with gr.Row():
        layers = gr.Dropdown([], value=[], multiselect=True, label="Layers to build", scale=3, elem_id="collection-layers",
                             info="Empty: the output of each stage.")
        k = gr.Slider(1, 25, value=9, step=1, label="k (examples kept per channel)", scale=1, elem_id="collection-k")
    with gr.Row():
        build_button = gr.Button("Build the atlas", variant="primary", elem_id="collection-build")
        stop_button = gr.Button("Stop", elem_id="collection-stop")
    status = gr.Markdown(elem_id="collection-status")
    with gr.Accordion("Skipped files", open=False, elem_id="collection-skipped-section"):
        skipped = gr.Markdown(elem_id="collection-skipped")
    job_id = gr.Textbox(visible=False, label="job id")
    job_state = gr.Textbox(visible=False, label="state")
    timer = gr.Timer(POLL_S, active=False)
    layer = gr.Dropdown([], value="", label="Layer", allow_custom_value=True, elem_id="collection-layer")
    caption = gr.Markdown(NO_COLLECTION, elem_id="collection-caption")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, max_height=360, elem_id="collection-table",
                         label="Channels over the whole collection")
    csv = gr.File(label="The table (CSV)", elem_id="collection-csv")
    with gr.Row():
        channel = gr.Number(0, precision=0, minimum=0, label="Channel", elem_id="collection-channel", scale=1)
        order = gr.Radio(ORDER_CHOICES, value="top", label="Which images", scale=2, elem_id="collection-order")
    examples_caption = gr.Markdown(elem_id="collection-examples-caption")
    gallery = gr.Gallery(label="The channel's examples (click one to open it in Feature maps)", columns=9, height=260,
                         format="png", object_fit="contain", elem_id="collection-gallery")
    listed = gr.JSON(visible=False, label="examples")
    shown = gr.State(None)
    if state.collection is not None:  # the page's collection, for Feature maps' top images
        collection.change(None, collection, state.collection, js="(name) => name", queue=False, api_visibility="private")

    # public endpoints: names and text only (hidden boxes: any collection or layer name, checked by the handler)
    api_collection = gr.Textbox(visible=False, label="collection")
    api_layers = gr.Textbox(visible=False, label="layers")
    api_layer = gr.Textbox(visible=False, label="layer")
    document_as_text(api_collection, "A collection's name as the server lists it (its --data NAME, or upload/<digest>); never a path.", "faces")
    document_as_text(api_layers, 'Layer names separated by commas ("layer3, layer4"); empty: each stage\'s output.', "layer4")
    document_as_text(api_layer, 'A layer the atlas was built for ("layer4").', "layer4")
    api_only = gr.Button(visible=False)
    api_only.click(atlas, [model, weights, api_collection, api_layers, k], [job_id, job_state, status], concurrency_id=WORK,
                   api_name="atlas")
    api_only.click(atlas_job, job_id, [job_id, job_state, status, skipped], concurrency_id=WORK, api_name="atlas_job")
    api_only.click(dataset_examples, [model, weights, api_collection, api_layer, channel, k, order], [gallery, listed],
                   concurrency_id=WORK, api_name="dataset_examples")
    api_only.click(collection_table, [model, weights, api_collection, api_layer], [table, caption], concurrency_id=WORK,
                   api_name="collection_table")

    view_inputs = [model, weights, collection, layer, channel, k, order]
    view_outputs = [caption, table, csv, gallery, examples_caption, shown]
    private = dict(concurrency_id=WORK, api_visibility="private")
    upload.upload(zip_uploaded, upload, collection, **private).success(view_page, view_inputs, view_outputs, **private)
    gr.on([collection.input, layer.input], view_page, view_inputs, view_outputs, trigger_mode="always_last", **private)
    gr.on([channel.submit, order.input, k.release], examples_page, view_inputs, [gallery, examples_caption, shown],
          trigger_mode="always_last", **private)
    build_button.click(build_page, [model, weights, collection, layers, k], [job_id, status, skipped, timer], **private)
    timer.tick(poll, [job_id, *view_inputs], [status, skipped, timer, layer, *view_outputs], **private)
    stop_button.click(stop_page, job_id, status, **private)
    inputs = [model, weights, layers, layer, collection, channel, k, order]
    return CollectionTab(refresh, dict(inputs=inputs, outputs=[layers, layer, *view_outputs], concurrency_id=WORK),
                         collection, gallery, shown, [collection])
