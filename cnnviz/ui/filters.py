"""The Filters tab: the first convolution's kernels as a grid; endpoint ``/filters``."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import explore
from .common import OUTPUTS, WORK, Refresh, user_errors, weights_used


@user_errors
def filters(model: str, weights: str = "pretrained", normalise: str = "layer"):
    """The first convolution's filters as an image, with a caption naming the layer and weight shape.

    Args:
        model: a curated key, a torchvision name or timm/<name>.
        weights: "pretrained" or "random".
        normalise: "layer" (one range for the whole layer) or "filter" (each filter's own range).
    """
    view = explore.filter_grid(model, weights, normalise)
    per = "the whole layer's range" if normalise == "layer" else "each filter's own range"
    colour = "in colour (R, G, B input channels)" if view.filters.weight.shape[1] == 3 else "in grey (mean over input channels)"
    caption = f"`{view.filters.layer}` · {view.filters.description}; drawn {colour}, scaled to {per}.\n\n{weights_used(view.weights)}"
    return OUTPUTS.write(f"{model}-filters.png", explore.encode(view.image, "png")), caption


@dataclass
class FiltersTab(Refresh):
    layer: gr.Dropdown  # the convolution shown ("" = the first); its choices are filled on a model change


def build(model: gr.Dropdown, weights: gr.Radio) -> FiltersTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh."""
    layer = gr.Dropdown([], value="", label="Convolution", allow_custom_value=True, elem_id="filters-layer")
    normalise = gr.Radio([("whole layer", "layer"), ("per filter", "filter")], value="layer", label="Normalise")
    caption = gr.Markdown(elem_id="filters-caption")
    image = gr.Image(
        label="First-layer filters", type="filepath", interactive=False, height=640,
        buttons=["download", "fullscreen"], elem_id="filters-image",
    )
    io = dict(inputs=[model, weights, normalise], outputs=[image, caption], concurrency_id=WORK)
    normalise.change(filters, **io, api_name="filters")
    return FiltersTab(filters, io, layer)
