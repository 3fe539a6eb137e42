"""The Gradio app: the shell (header, model picker, tabs, queue) and one module per tab.

The only package that imports gradio; it calls nothing of the library but :mod:`cnnviz.explore` (and
:mod:`cnnviz.server` for the process's temp folder and middlewares). Public endpoints:
``/architecture``, ``/filters``, ``/feature_maps``; everything else is wired as private events.

A new view is a new ``explore`` function, a new ``ui/<tab>.py`` with ``build(model, weights)`` and
its tests.
"""
from __future__ import annotations

import os

import gradio as gr
from starlette.middleware import Middleware

from .. import explore, server
from . import architecture as architecture_tab, feature_maps as feature_maps_tab, filters as filters_tab
from .architecture import architecture
from .common import (
    EXAMPLE_FILES, MAX_PER_CLIENT, MAX_PER_SESSION, MAX_UPLOAD, UPLOAD_QUOTA, WORK, CheckedBlocks, limit_clients,
    user_errors,
)
from .feature_maps import feature_maps
from .filters import filters

__all__ = ["CSS", "architecture", "build_demo", "feature_maps", "filters", "launch", "select_model"]

# Grids arrive at (about) the maps' own resolution; the page enlarges them with crisp pixels.
CSS = "#maps-image img, #filters-image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"


def model_notice(view: explore.ModelView) -> str:
    """The line under the model picker: which model, where, with which weights."""
    spec, outcome = view.spec, view.weights
    head = f"**{spec.display}** · {spec.source} · `{spec.key}` · on {view.device}"
    if outcome.notice:
        line = f"⚠️ {head} — **random weights**: {outcome.notice}"
    elif not outcome.pretrained:
        line = f"🎲 {head} — random weights (as chosen): filters and maps show an untrained network."
    else:
        line = f"✅ {head} — pretrained weights: {outcome.source}."
    return line + (f"\n\nℹ️ {view.note}" if view.note else "")


@user_errors
def select_model(model: str, weights: str, layer: str = "", progress=gr.Progress(track_tqdm=True)):
    """The model's notice and its layer list; ``layer`` stays chosen when the model has it (a weights
    switch compares the same layer trained and untrained), else the first convolution."""
    view = explore.select_model(model, weights)
    choices = [(info.label, info.name) for info in view.layers]
    keep = layer if any(info.name == layer for info in view.layers) else view.default_layer
    return model_notice(view), gr.Dropdown(choices=choices, value=keep)


@user_errors
def startup(progress=gr.Progress(track_tqdm=True)):
    """Open on the default model when its pretrained weights can be had, else on the bundled offline model."""
    opened = explore.startup_model()
    return opened.model, f"ℹ️ {opened.notice}" if opened.notice else ""


def build_demo() -> gr.Blocks:
    """Build the app. Nothing is loaded until a page opens (then the default model)."""
    gr.set_static_paths(sorted(EXAMPLE_FILES))  # examples are served in place, never copied to the cache
    with CheckedBlocks(title="CNN Explorer", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# 🔬 CNN Explorer\nWhat a convolutional network is made of and what it sees: its layers, "
            "its first-layer filters, and the feature maps of your own photo at any layer."
        )
        with gr.Row():
            model = gr.Dropdown(
                explore.curated_models(), value=None, label="Model", allow_custom_value=True, scale=3,
                info="Pick one, or type any torchvision name (resnet34) or timm name (timm/resnet50.a1_in1k).",
            )
            weights = gr.Radio(list(explore.WEIGHT_CHOICES), value="pretrained", label="Weights", scale=1)
        banner = gr.Markdown(elem_id="startup-banner")
        notice = gr.Markdown(elem_id="weights-notice")
        with gr.Tabs():  # each tab wires its own public endpoint first, so it keeps its name
            with gr.Tab("Architecture", id="architecture"):
                arch = architecture_tab.build(model, weights)
            with gr.Tab("Filters", id="filters"):
                kernels = filters_tab.build(model, weights)
            with gr.Tab("Feature maps", id="feature-maps"):
                maps = feature_maps_tab.build(model, weights)

        demo.load(startup, outputs=[model, banner], api_visibility="private", concurrency_id=WORK)
        model.input(lambda: "", None, banner, api_visibility="private", queue=False)  # the user chose: banner done
        for trigger, inputs in ((model.change, [model, weights]), (weights.change, [model, weights, maps.layer])):
            chain = trigger(select_model, inputs, [notice, maps.layer], api_visibility="private", concurrency_id=WORK)
            for tab in (arch, kernels, maps):  # a model or weights change refreshes every tab, one after the other
                chain = chain.success(tab.fn, **tab.io, api_visibility="private")
    # api_open=False: every call goes through the queue (Gradio's /run/<name> routes would skip it)
    demo.queue(max_size=int(os.environ.get("CNNVIZ_QUEUE_SIZE", "32")), default_concurrency_limit=2, api_open=False)
    limit_clients(demo, MAX_PER_SESSION, MAX_PER_CLIENT)
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
