"""The Feature maps tab: the user's photo through any layer, the top-5, and the drill-down into one
channel (click a tile) with per-channel statistics and exports.

Public endpoints: ``/feature_maps``, ``/channel``, ``/layer_stats``, ``/activations``, ``/intervene``,
``/channel_importance``.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import numpy as np
import pandas as pd

from .. import explore
from ..errors import CnnvizError, InvalidImageError, InvalidOptionError, quoted
from .common import (
    HEAVY,
    OUTPUTS,
    PROJECTION_CHOICES,
    WORK,
    PageState,
    Photo,
    Refresh,
    Refusal,
    in_page,
    label_dict,
    layer_dropdown,
    markdown_text,
    photo_box,
    projection_outputs,
    user_errors,
    warn,
    weights_used,
    whole,
)

CHANNEL_CHOICES = [
    ("first N", "first"), ("top N by mean", "top"), ("top N by max", "top-max"), ("dead only", "dead"), ("all", "all"),
]
NO_IMAGE = "Upload a photo, paste one, or pick an example to see its feature maps."
NO_CHANNEL = "Click a tile of the grid (or a row of the statistics table) to see that channel on the picture the model saw."
TOP5 = "Top-5 predictions"
TOP5_UNTRAINED = "Top-5 of an untrained network (random weights): guesses that mean nothing"
SCROLL_TO_GRID = "() => { document.querySelector('#maps-image')?.scrollIntoView({block: 'nearest', behavior: 'smooth'}); }"
STATS_HEADERS = ["channel", "mean", "max", "min", "std", "zeros %", "positive %", "dead"]
WHICH = {
    "first": "channels {first}–{last} of {total}, row by row",
    "top": "the {count} channels of {total} with the highest mean, strongest first",
    "top-max": "the {count} channels of {total} with the highest maximum, strongest first",
    "dead": "the {count} dead (all-zero) channels of {total}",
    "all": "all {total} channels, row by row",
}


@user_errors
def feature_maps(
    model: str,
    image: str,
    layer: str = "",
    weights: str = "pretrained",
    channels: str = "first",
    n: float = 64,
    colormap: str = "auto",
    normalise: str = "channel",
):
    """The image's feature maps at a layer, each tile labelled with its channel index, and the
    model's top-5 predictions.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        layer: qualified module name (e.g. "layer2.0.conv1"); empty: the first convolution.
        weights: "pretrained" or "random".
        channels: "first" N, "top" N by mean, "top-max" N by maximum, "dead" (all-zero) or "all".
        n: how many channels for "first", "top", "top-max" and "dead".
        colormap: auto (grey, or a diverging map centred on zero for signed layers), gray, viridis, magma, inferno, cividis or coolwarm.
        normalise: "channel" (each map its own range) or "layer" (one range for all).
    """
    view = explore.feature_maps(model, image, layer or None, weights, channels, whole(n, "N"), colormap, normalise)
    grid, labels, caption, _ = _maps_outputs(model, view, channels, normalise)
    return grid, labels, caption


@in_page(outputs=11, caption=2)
def show(model, image, layer, weights, channels, n, colormap, normalise, picked, opacity):
    """The page's view after any change: the grid, the top-5, the channel statistics and the picked
    channel on the picture. Before there is an image: hints, not errors; an untrained network's
    top-5 says so; a picked channel the new layer does not have is dropped. With no photo yet, a picked
    channel (a link's) is kept for when the photo comes."""
    if not image:
        return gr.Image(None, visible=True), None, NO_IMAGE, "", None, None, None, picked, None, None, NO_CHANNEL
    query = explore.MapsQuery(model, image, layer or None, weights, channels, whole(n, "N"), colormap, normalise,
                              channel=picked, opacity=opacity, channel_colormap=colormap,
                              keep_channel_if_present=True)  # the previous layer's channel: this one may have fewer
    try:
        page = explore.maps_page(query)  # one call: the grid, the statistics and the channel from one pass at most
    except InvalidImageError as e:  # one toast and a sentence where the grid goes; no "Error" badge on every output
        warn(str(e))
        return None, None, f"⚠️ {e}", "", None, None, None, None, None, None, NO_CHANNEL
    grid, labels, caption, trained = _maps_outputs(model, page.maps, channels, normalise)
    grid = gr.Image(grid, visible=grid is not None)  # nothing to draw (no dead channel): the caption's sentence only
    stats = _stats_outputs(model, page.stats)
    if page.channel is None:  # none asked (leave the box: a newer answer may have filled it), or dropped: clear it
        channel_view = (gr.skip() if picked is None else None, None, None, NO_CHANNEL)
    else:
        channel_view = (page.channel.channel, *_channel_outputs(model, page.channel))
    return (grid, gr.Label(labels, label=TOP5 if trained else TOP5_UNTRAINED), caption, *stats, *channel_view)


def _maps_outputs(model, view, channels, normalise):
    """(grid file, top-5 {label: probability}, caption, whether the weights are trained) of a FeatureMapsView."""
    total, count = view.maps.shape[0], len(view.channels)
    which = WHICH[channels].format(first=0, last=count - 1, count=count, total=total)
    if count == 1:
        which = which.replace(" channels of", " channel of")
    if channels == "dead" and not count:
        which = f"no dead channels: every one of the {total} channels has a non-zero value"
        return None, label_dict(view.predictions), f"`{view.layer.name}`: {which} here.\n\n{weights_used(view.weights)}", view.weights.pretrained
    scale = "each map scaled to its own range" if normalise == "channel" else "one scale for the whole layer"
    colours = "diverging colours centred on zero (blue negative, red positive)" if view.colormap == "coolwarm" else f"{view.colormap} colours"
    described = view.layer.label[len(view.layer.name):]  # " · type · C×H×W[, layout][, calls]"
    c, h, w = view.layer.shape
    seen = ""
    if view.source_size:
        (sw, sh), (ih, iw) = view.source_size, view.input_size
        seen = f" The model sees your {sw}×{sh} image resized and cropped to {iw}×{ih} (the picture in the channel view)."
    caption = (
        f"`{view.layer.name}`{described} — {view.place}.\n\n"
        f"Showing {which}; {scale}, {colours}; striped tiles are dead (all zero). Click a tile to see that channel "
        f"on the picture.{seen}\n\n{weights_used(view.weights)}"
    )
    grid = OUTPUTS.write(f"{model}-{view.layer.name}.jpg", explore.encode(view.image, "jpeg"))
    return grid, label_dict(view.predictions), caption, view.weights.pretrained


@user_errors
def channel(model: str, image: str, layer: str, channel: float, weights: str = "pretrained", opacity: float = 0.5):
    """One channel of a layer for the image: its map upsampled onto the picture the model saw (after its
    resize and centre crop) as a heat map, the map alone enlarged with a colour bar, and its statistics.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        layer: qualified module name (e.g. "layer2.0.conv1"); empty: the first convolution.
        channel: the channel index, from 0 to the layer's channel count minus one.
        weights: "pretrained" or "random".
        opacity: how strongly the heat map covers the picture, from 0 (picture only) to 1 (map only).
    """
    view = explore.channel(model, image, layer or None, whole(channel, "Channel"), weights, opacity)
    return _channel_outputs(model, view)


def _channel_outputs(model: str, view) -> tuple[str, str, str]:
    s = view.stats
    c, h, w = view.layer.shape
    lo, hi = view.value_range
    colours = "blue negative, white zero, red positive" if view.colormap == "coolwarm" else f"{view.colormap}: dark low, bright high"
    text = (
        f"**Channel {view.channel}** of {c} in `{view.layer.name}` ({h}×{w}, upsampled to the "
        f"{view.picture.shape[1]}×{view.picture.shape[0]} picture the model saw) · mean {s['mean']:.4g} · "
        f"max {s['max']:.4g} · min {s['min']:.4g} · std {s['std']:.4g} · zeros {s['zeros']:.1%} · "
        f"positive {s['positive']:.1%}{' · **dead** (all zero)' if s['max'] == s['min'] == 0 else ''}. "
        f"Colour bar: {lo:.4g} to {hi:.4g} ({colours}).\n\n{weights_used(view.weights)}"
    )
    name = f"{model}-{view.layer.name}-{view.channel}"
    return (
        OUTPUTS.write(f"{name}-overlay.jpg", explore.encode(view.overlay, "jpeg")),
        OUTPUTS.write(f"{name}-map.png", explore.encode(view.enlarged, "png")),
        text,
    )


def _page_channel(model, image, layer, channel, weights, opacity, colormap) -> tuple:
    """(channel, overlay, map, caption) for the page, in the tab's colormap. A channel the layer lacks
    is one warning and the sentence in the caption, the images cleared: never the previous channel's
    caption beside an error."""
    if not image or channel is None:
        return channel, None, None, NO_CHANNEL
    try:
        view = explore.channel(model, image, layer or None, channel, weights, opacity, colormap)
    except InvalidOptionError as e:
        warn(str(e))
        return channel, None, None, f"⚠️ {e}"
    return view.channel, *_channel_outputs(model, view)


@user_errors
def channel_if_image(model, image, layer, channel, weights, opacity, colormap):
    """The page's channel view after the Channel box or the opacity changed."""
    return _page_channel(model, image, layer, channel, weights, opacity, colormap)[1:]


@user_errors
def clicked_tile(model, image, layer, weights, channels, n, opacity, colormap, evt: gr.SelectData):
    """A click on the grid: the channel under the pointer, drawn on the picture (a gutter: no change)."""
    if not image or evt is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    x, y = evt.index
    picked = explore.channel_at(model, image, layer or None, x, y, weights, channels, whole(n, "N"))
    if picked is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return _page_channel(model, image, layer, picked, weights, opacity, colormap)


@user_errors
def clicked_row(model, image, layer, weights, opacity, colormap, evt: gr.SelectData):
    """A click on a row of the statistics table: that channel, drawn on the picture."""
    row = getattr(evt, "row_value", None)
    if not image or not row:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return _page_channel(model, image, layer, int(row[0]), weights, opacity, colormap)


@user_errors
def layer_stats(model: str, image: str, layer: str = "", weights: str = "pretrained"):
    """Per-channel statistics of a layer for the image: mean, max, min, std, the share of zeros and of
    positive values, and which channels are dead (all zero); as a table and a CSV file.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        layer: qualified module name (e.g. "layer2.0.conv1"); empty: the first convolution.
        weights: "pretrained" or "random".
    """
    summary, table, _, csv_path = _stats_outputs(model, explore.layer_stats(model, image, layer or None, weights))
    return summary, table, csv_path


def _stats_outputs(model, view):
    """(summary, table, bar plot data, CSV file) of a LayerStatsView."""
    s = view.stats
    dead = s.dead.tolist()
    constant = sorted(set(s.constant.tolist()) - set(dead))
    listed = lambda idx: ", ".join(map(str, idx[:32])) + (" …" if len(idx) > 32 else "")  # noqa: E731
    summary = (
        f"**{len(s.mean)} channels** of `{view.layer.name}` · dead (all zero): **{len(dead)}**"
        f"{': ' + listed(dead) if dead else ''} · constant but not zero: {len(constant)}"
        f"{': ' + listed(constant) if constant else ''} · layer mean {float(s.mean.mean()):.4g}, "
        f"max {float(s.max.max()):.4g}, min {float(s.min.min()):.4g}. Sort the table from a column's ⋮ menu; "
        f"click a row to see that channel.\n\n{weights_used(view.weights)}"
    )
    count = len(s.mean)
    table = pd.DataFrame(dict(zip(STATS_HEADERS, (  # whole columns at once: a 2048-channel layer costs no Python loop
        np.arange(count), s.mean.round(5), s.max.round(5), s.min.round(5), s.std.round(5),
        (100 * s.zeros).round(2), (100 * s.positive).round(2), np.where(np.isin(np.arange(count), s.dead), "dead", ""),
    ))))
    plot = gr.BarPlot(pd.DataFrame({"channel": np.arange(len(s.mean)), "mean": s.mean}), x_lim=[-0.5, len(s.mean) - 0.5])
    csv_path = OUTPUTS.write(f"{model}-{view.layer.name}-channel-stats.csv", s.to_csv().encode())
    return summary, table, plot, csv_path


@user_errors
def activations(model: str, image: str, layer: str = "", weights: str = "pretrained"):
    """The layer's raw activations for the image as a NumPy .npy file: float32, channels × height ×
    width, exactly the values the grid draws (channels-last and token layers already turned into maps).

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        layer: qualified module name (e.g. "layer2.0.conv1"); empty: the first convolution.
        weights: "pretrained" or "random".
    """
    info, maps, used = explore.layer_activations(model, image, layer or None, weights)
    return _npy(model, info, maps, used)


def _npy(model, info, maps, used) -> tuple[str, str]:
    """(.npy file, caption) of a layer's activations ``Tensor[C,H,W]``."""
    buffer = io.BytesIO()
    np.save(buffer, maps.numpy(), allow_pickle=False)
    c, h, w = maps.shape
    text = f"`{info.name}`: float32 array of {c}×{h}×{w} (channels × height × width).\n\n{weights_used(used)}"
    return OUTPUTS.write(f"{model}-{info.name}-activations.npy", buffer.getvalue()), text


@user_errors
def exports_if_image(model, image, layer, weights, channels, n, colormap, normalise):
    """The page's downloads: the grid as PNG, the activations (.npy), the channel statistics (CSV)."""
    if not image:
        raise Refusal(NO_IMAGE)
    query = explore.MapsQuery(model, image, layer or None, weights, channels, whole(n, "N"), colormap, normalise, export=True)
    page = explore.maps_page(query)  # one call, as the page's update
    view = page.maps
    grid = OUTPUTS.write(f"{model}-{view.layer.name}-grid.png", explore.encode(view.image, "png"))
    npy, _ = _npy(model, view.layer, view.maps, view.weights)
    csv_path = _stats_outputs(model, page.stats)[3]
    return [grid, npy, csv_path]


@user_errors
def project_picked(model, image, layer, channel, how, weights):
    """The picked channel's strongest unit taken back to the pixels (the Attribution tab's /projection)."""
    if not image or channel is None:
        return None, NO_CHANNEL
    return projection_outputs(model, image, layer, channel, how, weights)


def n_box(channels: str):
    """N means nothing when every channel is shown."""
    return gr.Slider(interactive=channels != "all")


TOP_IMAGES = 9  # the picked channel's images from the page's collection
NO_COLLECTION = ("Choose a collection in the **Collection** tab (and build its atlas there) to see the images of a whole "
                 "collection that drive this channel hardest.")


@user_errors
def top_images(model, weights, collection, layer, channel, is_open):
    """The picked channel's top images in the page's collection, when the accordion is open (else nothing
    changes, and nothing is computed). No atlas yet: a one-line hint, not an error. Returns (gallery,
    caption)."""
    if not is_open:
        return gr.skip(), gr.skip()
    if not collection:
        return [], NO_COLLECTION
    if channel is None or channel == "":
        return [], NO_CHANNEL
    try:
        view = explore.dataset_examples(model, layer or "", whole(channel, "Channel"), data=explore.collection_folder(collection),
                                        weights=weights, k=TOP_IMAGES)
    except explore.NotComputedError:
        return [], (f"ℹ️ No atlas of `{layer}` in {markdown_text(collection)} for this model and weights yet: build it in the "
                    "**Collection** tab.")
    except CnnvizError as e:
        return [], f"⚠️ {markdown_text(str(e).replace(str(explore.collection_folder(collection)), collection))}"
    gallery = [(OUTPUTS.write(f"{model}-{view.layer}-{view.channel}-top{i}.png", explore.encode(ex.crop, "png")),
                f"{ex.path} · {ex.value:.3g}") for i, ex in enumerate(view)]
    return gallery, (f"The {len(view)} images of {markdown_text(collection)} ({view.images:,} in its atlas) that drive channel "
                     f"**{view.channel}** of `{view.layer}` hardest, each cropped to what its strongest position sees.")


INTERVENTION_CHOICES = [("zero (ablate)", "zero"), ("its mean on this photo (ablate)", "mean"), ("scale × factor", "scale"),
                        ("keep only these (zero the rest)", "keep")]
NO_INTERVENTION = ("Pick channels (the clicked one is filled in), what to do to them, and press **Run**: the rest of the network "
                   "runs again from this layer, and the top-5 and a later layer's maps are shown before and after.")
NO_IMPORTANCE = ("Press the button: every channel of this layer is zeroed in turn (many per pass), and the channels are ranked "
                 "by how far the class's score (logit) drops. Click a row to open that channel.")
CHANGE_HEADERS = ["class", "logit before", "logit after", "Δ logit", "probability before", "probability after", "Δ probability"]
IMPORTANCE_HEADERS = ["channel", "drop", "rank"]


@user_errors
def intervene(model: str, image: str, layer: str, channels: str, mode: str = "zero", factor: float = 1.0,
              weights: str = "pretrained", later_layer: str = ""):
    """Change some channels of a layer (zero them, set them to their mean on this photo, scale them, or keep only them) and
    run the rest of the network from there: the top-5 before and after, the change of the top classes' scores, and the maps
    of a later layer before and after.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        layer: qualified module name of the layer to change (e.g. "layer4.0.conv1"); empty: the first convolution.
        channels: the channels to change: a number, numbers separated by commas ("3, 7, 12"), or "top-N" (the N with the highest mean on this photo).
        mode: "zero", "mean" (each channel set to its mean on this photo), "scale" (times the factor) or "keep" (only these channels, the rest zeroed).
        factor: the scale factor, from 0 to 3 (mode "scale" only).
        weights: "pretrained" or "random".
        later_layer: qualified module name of the later layer whose maps are drawn before and after; empty: the last map before the network pools it.
    """
    view = explore.intervene(model, image, layer or "", channels, mode=mode, factor=factor, weights=weights, later_layer=later_layer or "")
    return _intervention_outputs(model, view)


def _intervention_outputs(model: str, view) -> tuple:
    """(top-5 before, top-5 after, change table, later maps before, after, caption) of an InterventionView."""
    rows = pd.DataFrame([(c.label if c.label == f"class {c.index}" else f"{c.label} ({c.index})", round(c.logit_before, 4),
                          round(c.logit_after, 4), round(c.logit_after - c.logit_before, 4), round(c.probability_before, 4),
                          round(c.probability_after, 4), round(c.probability_after - c.probability_before, 4))
                         for c in view.changes], columns=CHANGE_HEADERS)
    top = view.changes[0] if view.changes else None
    said = ""
    if top is not None:
        said = (f" The top class before, **{markdown_text(top.label)}**: logit {top.logit_before:.3f} → {top.logit_after:.3f}, "
                f"probability {top.probability_before:.1%} → {top.probability_after:.1%}.")
    before_top = view.top5_before[0].label if view.top5_before else None
    after_top = view.top5_after[0].label if view.top5_after else None
    if before_top and after_top and before_top != after_top:
        said += f" The top class changes to **{markdown_text(after_top)}**."
    later = f"`{view.later.name}`"
    if view.maps_before is None:
        maps_text = f" {later} did not run in this pass: no maps to compare."
    elif not view.later_changed:
        maps_text = f" {later} comes before `{view.layer.name}`: the change cannot reach it, so its maps are the same."
    else:
        maps_text = (f" Below: the {len(view.later_channels)} strongest channels of {later} as the model made them (left) and after "
                     "the change (right), on one scale.")
    what = view.describe().replace(f" of {view.layer.name} ", f"** of `{view.layer.name}` **")  # a listed layer's name: code, not text
    caption = f"**{what[:1].upper()}{what[1:]}**.{said}{maps_text}\n\n{weights_used(view.weights)}"
    name = f"{model}-{view.layer.name}-{view.mode}"
    images = [None if grid is None else OUTPUTS.write(f"{name}-{which}.png", explore.encode(grid, "png"))
              for which, grid in (("before", view.maps_before), ("after", view.maps_after))]
    return label_dict(view.top5_before), label_dict(view.top5_after), rows, *images, caption


@user_errors
def intervene_in_page(model, image, layer, channels, mode, factor, weights, later_layer):
    """The page's intervention (a hint before there is a photo or a channel)."""
    if not image:
        return None, None, None, None, None, NO_IMAGE
    if channels is None or not str(channels).strip():
        return None, None, None, None, None, "Type channels first (or click a tile of the grid: its channel is filled in)."
    return intervene(model, image, layer, channels, mode, factor, weights, later_layer)


@user_errors
def channel_importance(model: str, image: str, layer: str, target: str = "", weights: str = "pretrained"):
    """Which channels of a layer matter for a class: each channel zeroed in turn (many per pass), ranked by how far the
    class's score (logit) drops; a positive drop means the channel supported the class.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        layer: qualified module name (e.g. "layer4.0.conv1"); empty: the first convolution.
        target: the class, as an index ("281") or a label ("tabby"); empty: the model's top class.
        weights: "pretrained" or "random".
    """
    return _importance(model, image, layer, target, weights)


def _importance(model, image, layer, target, weights, progress=None):
    """:func:`channel_importance`'s outputs; ``progress(done, total)`` as each pass starts."""
    view = explore.channel_importance(model, image, layer or "", target=target or None, weights=weights, progress=progress)
    count = len(view.drops)
    table = pd.DataFrame({"channel": view.ranking, "drop": view.drops[view.ranking].astype(np.float64).round(5),
                          "rank": np.arange(1, count + 1)})
    plot = gr.BarPlot(pd.DataFrame({"channel": np.arange(count), "drop": view.drops}), x_lim=[-0.5, count - 0.5])
    best = ", ".join(str(int(c)) for c in view.ranking[:5])
    how = "the network before the layer once per pass" if view.fast else "whole copies of the photo (this model cannot share the start)"
    caption = (f"**{markdown_text(view.label)}** (class {view.class_index}, logit {view.logit:.3f}, probability {view.probability:.1%}): "
               f"each of the {count} channels of `{view.layer.name}` zeroed alone; the drop is the class's logit before minus after "
               f"(positive: the channel supported the class, negative: it held it back). Most important: {best}. "
               f"{view.passes} passes, {view.batch} channels per pass, {how}. Click a row to open that channel."
               f"\n\n{weights_used(view.weights)}")
    return caption, plot, table


@user_errors
def importance_in_page(model, image, layer, target, weights, progress=gr.Progress()):
    """The page's ranking, its passes counted on the plot as they are made."""
    if not image:
        return NO_IMAGE, None, None

    def counted(done: int, total: int) -> None:
        progress((done - 1, total), desc=f"Zeroing the channels: pass {done} of {total}", unit="passes done")  # the bar: what is done

    return _importance(model, image, layer, target, weights, counted)


def follow_channel(channel):
    """The Intervene box follows the picked channel (a typed list stays until another channel is picked)."""
    return gr.skip() if channel is None or channel == "" else str(int(channel))


LINK = ("layer", "channel")  # ?model=resnet18&layer=layer3.0.conv1[&tab=feature-maps&channel=12]


def from_link(params: dict[str, str], model: str, weights: str) -> tuple:
    """The tab's part of a page link: (layer picker, channel). ``layer`` is the Feature maps layer whatever
    the tab (the Architecture table highlights it), except in an Attribution link, where it is the CAM's
    target layer; ``channel`` only in a Feature maps link. A link's mistake gets a warning, the default stays."""
    view = explore.select_model(model, weights)
    layer, channel = view.default_layer, None
    if params.get("layer") and params.get("tab") != "attribution":
        try:
            layer = explore.find_layer(model, weights, params["layer"]).name
        except CnnvizError as e:
            warn(f"The link's layer: {e} Showing {layer}.")
    if params.get("channel") and params.get("tab") == "feature-maps":
        if params["channel"].isdigit():
            channel = int(params["channel"])  # one the layer lacks is said by the channel view
        else:
            warn(f"The link's channel {quoted(params['channel'])} is not a channel number (0, 1, …).")
    return layer_dropdown(view, layer), channel


@dataclass
class FeatureMapsTab(Refresh):
    layer: gr.Dropdown  # the shell fills its choices on a model change
    photo: Photo
    channel: gr.Number
    link_outputs: list  # what from_link's answer goes to


def build(state: PageState, live: Callable | None = None, looks_for: Callable | None = None) -> FeatureMapsTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh.

    The shell composes the sections other modules own: ``live(layer, channels, n, colormap, normalise)``
    (the live webcam) is called inside the controls column, ``looks_for(layer, channel, image)`` (what the
    picked channel looks for) under the channel view."""
    model, weights = state.model, state.weights
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            photo = photo_box("Your image", "input-image")
            image = photo.box
            layer = gr.Dropdown([], value="", label="Layer", allow_custom_value=True, elem_id="layer-select")
            channels = gr.Radio(CHANNEL_CHOICES, value="first", label="Channels", elem_id="channels")
            n = gr.Slider(1, 4096, value=64, step=1, label="N", elem_id="n-slider")
            colormap = gr.Dropdown(list(explore.COLORMAPS), value="auto", label="Colormap", elem_id="colormap",
                                   info="auto: grey, or blue–white–red centred on zero when the layer has negative values")
            normalise = gr.Radio([("per channel", "channel"), ("per layer", "layer")], value="channel", label="Normalise")
            if live is not None:
                live(layer, channels, n, colormap, normalise)  # live camera: its own accordion and limits
        with gr.Column(scale=2, min_width=320):
            caption = gr.Markdown(elem_id="maps-caption")
            grid = gr.Image(  # no floating label: it covered tile 0's channel index (the caption says what it is)
                label="Feature maps (click a tile)", show_label=False, type="filepath", interactive=False, height=640,
                buttons=["download", "fullscreen"], elem_id="maps-image",
            )
            predictions = gr.Label(num_top_classes=5, label=TOP5, elem_id="predictions")
    with gr.Group(elem_id="channel-view"):
        with gr.Row():
            picked = gr.Number(label="Channel", precision=0, elem_id="channel-number", scale=1)
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity of the map over the picture", scale=3, elem_id="opacity")
        with gr.Row():
            overlay = gr.Image(label="The channel on the picture the model saw", type="filepath", interactive=False,
                               height=360, elem_id="channel-overlay", buttons=["download", "fullscreen"])
            enlarged = gr.Image(label="The channel's map (colour bar: its values)", type="filepath", interactive=False,
                                height=360, elem_id="channel-map", buttons=["download", "fullscreen"])
        channel_text = gr.Markdown(NO_CHANNEL, elem_id="channel-caption")
    if looks_for is not None:
        looks_for(layer, picked, image)  # what the picked channel looks for: its own section and endpoint
    with gr.Accordion("Top 9 images in the collection (dataset examples)", open=False, elem_id="maps-top-images") as top_section:
        top_caption = gr.Markdown(NO_COLLECTION, elem_id="maps-top-caption")
        top_gallery = gr.Gallery(label="The channel's top images in the collection", columns=9, height=200, format="png",
                                 object_fit="contain", elem_id="maps-top-gallery")
    top_open = gr.State(False)
    with gr.Accordion("Zeiler–Fergus projection of this channel (what in the photo drives it)", open=False,
                      elem_id="maps-projection"):
        with gr.Row():
            how = gr.Radio(PROJECTION_CHOICES, value="guided_backprop", label="Projection", scale=3)
            go = gr.Button("Project this channel back to the pixels", elem_id="maps-project", scale=1)
        projected = gr.Image(label="Projection (left) beside the part of the picture it covers (right)", type="filepath",
                             interactive=False, height=320, elem_id="maps-projected")
        projected_caption = gr.Markdown(elem_id="maps-projection-caption")
    go.click(project_picked, [model, image, layer, picked, how, weights], [projected, projected_caption],
             **HEAVY, api_visibility="private")
    with gr.Accordion("Intervene: change channels and run the rest of the network", open=False, elem_id="maps-intervene"):
        with gr.Row():
            int_channels = gr.Textbox(label="Channels", placeholder="3, 7, 12 or top-5", elem_id="intervene-channels", scale=2,
                                      info="Numbers separated by commas, or top-N (the N strongest on this photo).")
            int_mode = gr.Radio(INTERVENTION_CHOICES, value="zero", label="Do", elem_id="intervene-mode", scale=3)
        with gr.Row():
            int_factor = gr.Slider(0, explore.MAX_SCALE, value=2.0, step=0.1, label="Scale factor (scale only)", elem_id="intervene-factor")
            int_later = gr.Textbox(label="Later layer to compare", placeholder="empty: the last map before pooling", elem_id="intervene-later")
            int_go = gr.Button("Run", variant="primary", elem_id="intervene-run")
        int_caption = gr.Markdown(NO_INTERVENTION, elem_id="intervene-caption")
        with gr.Row():
            int_before = gr.Label(num_top_classes=5, label="Top-5 before", elem_id="intervene-before")
            int_after = gr.Label(num_top_classes=5, label="Top-5 after", elem_id="intervene-after")
        int_table = gr.Dataframe(headers=CHANGE_HEADERS, interactive=False, elem_id="intervene-changes",
                                 label="The top classes' scores before and after")
        with gr.Row():
            int_maps_before = gr.Image(label="Later layer before", type="filepath", interactive=False, height=320,
                                       elem_id="intervene-maps-before", buttons=["download", "fullscreen"])
            int_maps_after = gr.Image(label="Later layer after", type="filepath", interactive=False, height=320,
                                      elem_id="intervene-maps-after", buttons=["download", "fullscreen"])
    with gr.Accordion("Which channels matter for this class", open=False, elem_id="maps-importance"):
        with gr.Row():
            imp_target = gr.Textbox(label="Class (empty: the top class)", placeholder="tabby or 281", elem_id="importance-target", scale=2)
            imp_go = gr.Button("Zero each channel in turn and rank them", variant="primary", elem_id="importance-run", scale=1)
        imp_caption = gr.Markdown(NO_IMPORTANCE, elem_id="importance-caption")
        imp_plot = gr.BarPlot(x="channel", y="drop", title="Drop of the class's logit when the channel is zeroed", height=220,
                              elem_id="importance-plot", label="Drop per channel")
        imp_table = gr.Dataframe(headers=IMPORTANCE_HEADERS, interactive=False, max_height=360, elem_id="importance-table",
                                 label="Channels by drop, largest first (click a row to open it)")
    with gr.Accordion("Channel statistics", open=True, elem_id="stats-section"):
        stats_summary = gr.Markdown(elem_id="stats-summary")
        means = gr.BarPlot(x="channel", y="mean", title="Mean activation per channel", height=220, elem_id="stats-plot",
                           label="Mean activation per channel")
        stats_table = gr.Dataframe(headers=STATS_HEADERS, interactive=False, max_height=360, elem_id="stats-table",
                                   label="Per-channel statistics (sort from a column's ⋮ menu; click a row to open it)")
        stats_csv = gr.File(label="Channel statistics (CSV)", elem_id="stats-csv")
    with gr.Accordion("Export", open=False, elem_id="export-section"):
        export = gr.Button("Prepare downloads: grid (PNG), activations (.npy), statistics (CSV)", elem_id="export-button")
        files = gr.File(label="Downloads", file_count="multiple", elem_id="export-files")
        npy = gr.File(label="Activations (.npy)", visible=False)
        npy_text = gr.Markdown(visible=False, label="caption")

    io_maps = dict(
        inputs=[model, image, layer, weights, channels, n, colormap, normalise],
        outputs=[grid, predictions, caption], concurrency_id=WORK,
    )
    io_channel = dict(inputs=[model, image, layer, picked, weights, opacity], outputs=[overlay, enlarged, channel_text], concurrency_id=WORK)
    io_stats = dict(inputs=[model, image, layer, weights], concurrency_id=WORK)
    api_only = gr.Button(visible=False)  # the public endpoints are strict: no image is an error there
    api_only.click(feature_maps, **io_maps, api_name="feature_maps")
    api_only.click(channel, **io_channel, api_name="channel")
    api_only.click(layer_stats, **io_stats, outputs=[stats_summary, stats_table, stats_csv], api_name="layer_stats")
    api_only.click(activations, **io_stats, outputs=[npy, npy_text], api_name="activations")

    io_page = dict(
        inputs=io_maps["inputs"] + [picked, opacity],  # the tab's colormap is in io_maps: the channel view uses it too
        outputs=[grid, predictions, caption, stats_summary, stats_table, means, stats_csv, picked, overlay, enlarged, channel_text],
        concurrency_id=WORK,
    )
    gr.on(  # in the page, controls touched before there is an image show a hint, not an error; N applies on
        # dragging, on Enter in its box and on its reset (always_last: one run after a burst of changes)
        [image.change, layer.input, channels.change, n.change, colormap.change, normalise.change],
        show, **io_page, trigger_mode="always_last", api_visibility="private",
    )
    channels.change(n_box, channels, n, queue=False, api_visibility="private")
    image.change(None, js=SCROLL_TO_GRID)  # an example clicked below the fold: bring the result into view
    clicked = [picked, overlay, enlarged, channel_text]
    top = dict(fn=top_images, inputs=[model, weights, state.collection or gr.State(""), layer, picked, top_open],
               outputs=[top_gallery, top_caption], concurrency_id=WORK, api_visibility="private")
    top_section.expand(lambda: True, None, top_open, queue=False, api_visibility="private").then(**top)
    top_section.collapse(lambda: False, None, top_open, queue=False, api_visibility="private")
    grid.select(clicked_tile, [model, image, layer, weights, channels, n, opacity, colormap], clicked, concurrency_id=WORK,
                api_visibility="private").then(**top)
    stats_table.select(clicked_row, [model, image, layer, weights, opacity, colormap], clicked, concurrency_id=WORK,
                       api_visibility="private").then(**top)
    gr.on(  # Enter in the Channel box; the opacity slider dragged, typed + Enter, or reset
        [picked.submit, opacity.change], channel_if_image, [*io_channel["inputs"], colormap], io_channel["outputs"],
        concurrency_id=WORK, trigger_mode="always_last", api_visibility="private",
    ).then(**top)
    export.click(exports_if_image, io_maps["inputs"], files, concurrency_id=WORK, api_visibility="private")
    int_io = dict(inputs=[model, image, layer, int_channels, int_mode, int_factor, weights, int_later],
                  outputs=[int_before, int_after, int_table, int_maps_before, int_maps_after, int_caption], **HEAVY)
    api_only.click(intervene, **int_io, api_name="intervene")
    int_go.click(intervene_in_page, **int_io, api_visibility="private")
    imp_io = dict(inputs=[model, image, layer, imp_target, weights], outputs=[imp_caption, imp_plot, imp_table], **HEAVY)
    api_only.click(channel_importance, **imp_io, api_name="channel_importance")
    imp_go.click(importance_in_page, **imp_io, api_visibility="private", show_progress_on=[imp_plot])  # the caption stays readable
    imp_table.select(clicked_row, [model, image, layer, weights, opacity, colormap], clicked, concurrency_id=WORK,
                     api_visibility="private").then(**top)
    picked.change(follow_channel, picked, int_channels, queue=False, api_visibility="private")

    return FeatureMapsTab(show, io_page, layer, photo, picked, [layer, picked])
