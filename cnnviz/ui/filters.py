"""The Filters tab: any convolution's kernels as a grid, a histogram of its weights and per-filter norms
(dead / near-zero filters flagged); endpoint ``/filters``."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from .. import explore
from ..errors import quoted
from .common import OUTPUTS, WORK, PageState, Refresh, in_page, user_errors, warn, weights_used, whole

ALL = -1  # the input-channel value meaning "all of them": RGB for a layer that sees the image, else their mean
FLAGGED_SHOWN = 20  # flagged filters listed in the caption (the table lists them all)
NORMAL, FLAGGED = "normal", "dead / near zero"


@user_errors
def filters(model: str, weights: str = "pretrained", normalise: str = "layer", layer: str = "", input_channel: float = ALL):
    """A convolution's filters as an image, with a caption naming the layer, its weight shape, what each
    tile shows, and how many filters are dead or near zero.

    Args:
        model: a curated key, a torchvision name or timm/<name>.
        weights: "pretrained" or "random".
        normalise: "layer" (one range for the whole layer) or "filter" (each filter's own range).
        layer: a convolution's qualified name (e.g. "layer4.2.conv2"); empty: the first convolution.
        input_channel: -1 for all input channels (colour when the layer sees the image, else their mean), or one input channel's index.
    """
    view = explore.filter_grid(model, weights, normalise, layer or None, _channel(input_channel))
    return _grid_file(model, view), caption(view, normalise)


@in_page(outputs=6, caption=1)
def filters_page(model: str, weights: str, normalise: str, layer: str, input_channel: float):
    """The page's version: the grid, caption, histogram, norms and flagged table; an input channel the
    newly chosen layer does not have falls back to all of them (-1) instead of an error."""
    return _page(model, weights, normalise, layer, input_channel)[1]


@in_page(outputs=6, caption=1)
def channel_typed(model: str, weights: str, normalise: str, layer: str, input_channel: float):
    """The page after the Input channel box changed: a channel the layer does not have is refused with
    its sentence (the last grid stays), never quietly replaced by -1."""
    return _page(model, weights, normalise, layer, input_channel, keep_channel=True)[1]


@user_errors
def refresh(model: str, weights: str, normalise: str, layer: str, input_channel: float):
    """After a model or weights change: the new model's convolutions in the layer list (the chosen one
    kept when the model has it, else the first convolution), then the page."""
    convs = explore.list_convolutions(model, weights)
    keep = layer if any(conv.name == layer for conv in convs) else ""
    view, outputs = _page(model, weights, normalise, keep, input_channel if keep else ALL)
    return (gr.Dropdown(choices=[(conv.label, conv.name) for conv in convs], value=view.conv.name), *outputs)


def _page(model, weights, normalise, layer, input_channel, keep_channel: bool = False) -> tuple[explore.FiltersView, tuple]:
    """The view and the page's outputs (grid, caption, histogram, norms, flagged, input-channel box).
    ``keep_channel``: the channel was typed for this layer, so one it lacks is an error, not the previous
    layer's channel to drop."""
    channel = _channel(input_channel)
    if channel is not None and not keep_channel:
        conv = next((c for c in explore.list_convolutions(model, weights) if c.name == layer), None)
        if conv is not None and channel >= conv.inputs_per_filter:
            channel = None  # the previous layer's channel: this one has fewer
    view = explore.filter_grid(model, weights, normalise, layer or None, channel)
    per = view.filters.weight.shape[1]
    if per == 1:
        info = "Each filter has one input channel (depthwise): -1 and 0 show the same."
    else:
        info = f"-1: all {per} ({'colour' if view.conv.sees_image and per == 3 else 'their mean'}); 0–{per - 1}: one input channel's slice"
    number = gr.Number(value=ALL if channel is None else channel, info=info)  # no maximum: the range is checked here, in a sentence
    grid = _grid_file(model, view)
    return view, (grid, caption(view, normalise), histogram_frame(view), norms_frame(view), flagged_frame(view), number)


def _channel(value) -> int | None:
    channel = whole(value, "Input channel")
    return None if channel == ALL else channel


def _grid_file(model: str, view: explore.FiltersView) -> str:
    return OUTPUTS.write(f"{model}-{view.conv.name}-filters.png", explore.encode(view.image, "png"))


def caption(view: explore.FiltersView, normalise: str) -> str:
    """The layer, its weight shape and kind, what each tile shows, the norms summary, the weights line."""
    per = "the whole layer's range" if normalise == "layer" else "each filter's own range"
    norms = view.norms
    count = len(norms.flagged)
    listed = ", ".join(map(str, norms.flagged[:FLAGGED_SHOWN].tolist())) + (" …" if count > FLAGGED_SHOWN else "")
    kind = f" · {view.conv.kind}" if view.conv.groups > 1 else ""  # depthwise, grouped: said here
    dead = f"**{count} dead / near-zero** ({listed})" if count else "none dead or near zero"
    return (
        f"`{view.filters.layer}` · {view.filters.description}{kind}; drawn {view.drawn}, scaled to {per}. "
        f"Filter L2 norms: median {norms.median:.3g}, {dead} (norm 0 or below 1e-3 × median).\n\n"
        f"{weights_used(view.weights)}"
    )


def histogram_frame(view: explore.FiltersView) -> pd.DataFrame:
    """The library's histogram as rows (bin centre, count) for the bar plot."""
    return pd.DataFrame({"weight": view.histogram.centres, "count": view.histogram.counts})


def norms_frame(view: explore.FiltersView) -> pd.DataFrame:
    """One row per output filter: index, L2 norm, flagged or not."""
    flags = pd.Series(NORMAL, index=range(len(view.norms.norms)))
    flags.iloc[view.norms.flagged] = FLAGGED
    return pd.DataFrame({"filter": range(len(view.norms.norms)), "L2 norm": view.norms.norms, "status": flags})


def flagged_frame(view: explore.FiltersView) -> pd.DataFrame:
    """The flagged filters: index, norm, and norm as a fraction of the median (3 significant digits)."""
    norms = view.norms
    values = norms.norms[norms.flagged]
    ratio = values / norms.median if norms.median else values * 0
    return pd.DataFrame({
        "filter": norms.flagged, "L2 norm": [f"{v:.3g}" for v in values], "× median": [f"{r:.3g}" for r in ratio],
    })


LINK = ("layer",)  # ?tab=filters&layer=layer2.0.conv2


def from_link(params: dict[str, str], model: str, weights: str) -> tuple:
    """The tab's part of a page link: (convolution shown,), only when the link opens this tab. A layer
    that is no convolution gets a warning and the first convolution is shown."""
    wanted = params.get("layer", "")
    if params.get("tab") != "filters" or not wanted:
        return (gr.skip(),)
    convs = [conv.name for conv in explore.list_convolutions(model, weights)]
    if wanted in convs:
        return (wanted,)
    warn(f"The link's layer {quoted(wanted)} is not a convolution; Filters shows the first one.")
    return (gr.skip(),)


@dataclass
class FiltersTab(Refresh):
    layer: gr.Dropdown  # the convolution shown ("" = the first); its choices are filled on a model change
    link_outputs: list  # what from_link's answer goes to


def build(state: PageState) -> FiltersTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh."""
    model, weights = state.model, state.weights
    with gr.Row():
        layer = gr.Dropdown(
            [], value="", label="Convolution", allow_custom_value=True, scale=3, elem_id="filters-layer",
            info="Every Conv2d of the model in definition order; depthwise and grouped ones say so.",
        )
        input_channel = gr.Number(
            value=ALL, precision=0, label="Input channel", scale=1, elem_id="filters-input-channel",
            info="-1: all (colour for the image's R, G, B, else their mean); 0, 1, …: one input channel's slice",
        )
        normalise = gr.Radio([("whole layer", "layer"), ("per filter", "filter")], value="layer", label="Normalise", scale=1)
    caption_md = gr.Markdown(elem_id="filters-caption")
    image = gr.Image(
        label="Filters", type="filepath", interactive=False, height=640,
        buttons=["download", "fullscreen"], elem_id="filters-image",
    )
    with gr.Row():
        histogram = gr.BarPlot(
            x="weight", y="count", label="Histogram of the layer's weights", x_title="weight value",
            y_title="weights in bin", height=260, elem_id="filters-histogram",
        )
        norms = gr.BarPlot(
            x="filter", y="L2 norm", color="status", label="L2 norm of each filter",
            color_map={NORMAL: "#6366f1", FLAGGED: "#ef4444"}, height=260, elem_id="filters-norms",
        )
    flagged = gr.Dataframe(
        headers=["filter", "L2 norm", "× median"], label="Dead / near-zero filters (norm 0 or below 1e-3 × median)",
        interactive=False, max_height=200, elem_id="filters-flagged",
    )
    inputs = [model, weights, normalise, layer, input_channel]
    page = [image, caption_md, histogram, norms, flagged, input_channel]
    api_only = gr.Button(visible=False)  # /filters answers (image, caption); the page also gets the plots
    api_only.click(filters, inputs, [image, caption_md], concurrency_id=WORK, api_name="filters")
    gr.on(
        [normalise.change, layer.change], filters_page, inputs, page, concurrency_id=WORK, api_visibility="private",
    )
    input_channel.input(channel_typed, inputs, page, concurrency_id=WORK, api_visibility="private")
    return FiltersTab(refresh, dict(inputs=inputs, outputs=[layer, *page], concurrency_id=WORK), layer, [layer])
