"""The Feature maps tab: the user's photo through any layer, and the top-5; endpoint ``/feature_maps``."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import explore
from .common import EXAMPLE_FILES, OUTPUTS, WORK, Refresh, SafeImage, label_dict, user_errors, weights_used, whole

CHANNEL_CHOICES = [("first N", "first"), ("top N by mean activation", "top"), ("all", "all")]
NO_IMAGE = "Upload a photo, paste one, or pick an example to see its feature maps."
TOP5 = "Top-5 predictions"
TOP5_UNTRAINED = "Top-5 of an untrained network (random weights): guesses that mean nothing"


@user_errors
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
    """The image's feature maps at a layer and the model's top-5 predictions.

    Args:
        model: a curated key, a torchvision name or timm/<name>.
        image: an uploaded image file.
        layer: qualified module name (e.g. "layer2.0.conv1"); empty: the first convolution.
        weights: "pretrained" or "random".
        channels: "first" N, "top" N by mean activation, or "all".
        n: how many channels for "first" and "top".
        colormap: gray, viridis, magma, inferno, cividis or coolwarm.
        normalise: "channel" (each map its own range) or "layer" (one range for all).
    """
    grid, labels, caption, _ = _answer(model, image, layer, weights, channels, n, colormap, normalise)
    return grid, labels, caption


@user_errors
def maps_if_image(model, image, layer, weights, channels, n, colormap, normalise):
    """The page's version: a hint instead of an error before there is an image, and a top-5 headline
    that says so when the network is untrained."""
    if not image:
        return None, None, NO_IMAGE
    grid, labels, caption, trained = _answer(model, image, layer, weights, channels, n, colormap, normalise)
    return grid, gr.Label(labels, label=TOP5 if trained else TOP5_UNTRAINED), caption


def _answer(model, image, layer, weights, channels, n, colormap, normalise):
    """(grid file, top-5 {label: probability}, caption, whether the weights are trained)."""
    view = explore.feature_maps(model, image, layer or None, weights, channels, whole(n, "N"), colormap, normalise)
    shown = view.channels.tolist()
    total = view.maps.shape[0]
    if channels == "top":
        which = f"the {len(shown)} channels with the highest mean activation, strongest first: {', '.join(map(str, shown[:16]))}{' …' if len(shown) > 16 else ''}"
    else:
        which = f"channels 0–{len(shown) - 1} of {total}, row by row"
    described = view.layer.label[len(view.layer.name):]  # " · type · C×H×W[, layout][, calls]"
    caption = f"`{view.layer.name}`{described} — {which}; {normalise} normalisation.\n\n{weights_used(view.weights)}"
    grid = OUTPUTS.write(f"{model}-{view.layer.name}.jpg", explore.encode(view.image, "jpeg"))
    return grid, label_dict(view.predictions), caption, view.weights.pretrained


@dataclass
class FeatureMapsTab(Refresh):
    layer: gr.Dropdown  # the shell fills its choices on a model change


def build(model: gr.Dropdown, weights: gr.Radio) -> FeatureMapsTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh."""
    with gr.Row():
        with gr.Column(scale=1):
            image = SafeImage(
                type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Your image",
                elem_id="input-image",
            )
            gr.Examples([[str(p)] for p in sorted(EXAMPLE_FILES)], inputs=[image], label="Examples")
            layer = gr.Dropdown([], value="", label="Layer", allow_custom_value=True, elem_id="layer-select")
            channels = gr.Radio(CHANNEL_CHOICES, value="first", label="Channels")
            n = gr.Slider(1, 2048, value=64, step=1, label="N")
            colormap = gr.Dropdown(list(explore.COLORMAPS), value="gray", label="Colormap")
            normalise = gr.Radio([("per channel", "channel"), ("per layer", "layer")], value="channel", label="Normalise")
        with gr.Column(scale=2):
            caption = gr.Markdown(elem_id="maps-caption")
            grid = gr.Image(
                label="Feature maps", type="filepath", interactive=False, height=640,
                buttons=["download", "fullscreen"], elem_id="maps-image",
            )
            predictions = gr.Label(num_top_classes=5, label=TOP5, elem_id="predictions")
    io = dict(
        inputs=[model, image, layer, weights, channels, n, colormap, normalise],
        outputs=[grid, predictions, caption], concurrency_id=WORK,
    )
    api_only = gr.Button(visible=False)  # /feature_maps is strict: no image is an error there
    api_only.click(feature_maps, **io, api_name="feature_maps")
    gr.on(  # in the page, controls touched before there is an image show a hint, not an error
        [image.change, layer.input, channels.change, n.release, colormap.change, normalise.change],
        maps_if_image, **io, api_visibility="private",
    )
    return FeatureMapsTab(maps_if_image, io, layer)
