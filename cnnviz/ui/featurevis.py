"""What a channel looks for, under the Feature maps tab's channel view: an image generated to excite the
picked channel (activation maximisation, :mod:`cnnviz.featurevis`), with a progress bar, and how
strongly it excites the channel compared with the user's photo.

Public endpoint: ``/channel_visualization``.
"""
from __future__ import annotations

import gradio as gr

from .. import explore
from .common import HEAVY, OUTPUTS, PageState, user_errors, warn, weights_used, whole

BUTTON = "What does this channel look for?"
HINT = (
    "Pick a channel (click a tile), then press the button: the app paints an image, starting from noise, "
    "that makes this channel respond as strongly as it can."
)
NO_CHANNEL = "Pick a channel first: click a tile of the grid, or type its number in the Channel box."


def _reporter(progress: gr.Progress | None):
    """The library's ``progress(step, total)`` fed to Gradio's bar, about 64 updates per run."""
    if progress is None:
        return None

    def report(step: int, total: int) -> None:
        if step == total or step % max(1, total // 64) == 0:
            progress((step, total), desc="Generating the image", unit="steps")

    return report


def _generate(model, layer, channel, steps, weights, seed, progress) -> tuple[explore.ChannelVisualizationView, str]:
    view = explore.channel_visualization(
        model, layer or None, whole(channel, "Channel"), whole(steps, "Steps"), weights, whole(seed, "Seed"),
        progress=_reporter(progress),
    )
    path = OUTPUTS.write(f"{model}-{view.layer.name}-{view.channel}-seed{view.seed}-looks-for.png",
                         explore.encode(view.image, "png"))
    return view, path


def _reached(view: explore.ChannelVisualizationView) -> str:
    h, w = view.size
    return (
        f"**Channel {view.channel}** of {view.layer.shape[0]} in `{view.layer.name}`: this {w}×{h} image, generated "
        f"in {view.steps} steps (seed {view.seed}), reaches a mean activation of **{view.activation:.4g}**."
    )


@user_errors
def channel_visualization(
    model: str, layer: str, channel: float, steps: float = 256, weights: str = "pretrained", seed: float = 0,
    progress=gr.Progress(),
):
    """An image generated from noise to make one channel of a layer respond as strongly as it can (activation
    maximisation in Fourier space with colour decorrelation and random jitter, scale and rotation), and the mean
    activation it reaches.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        layer: qualified module name (e.g. "layer2.0.conv1"); empty: the first convolution.
        channel: the channel index, from 0 to the layer's channel count minus one.
        steps: optimisation steps, from 1 to 2048 (more: a clearer image, slower); cached per model, layer, channel, steps and seed.
        weights: "pretrained" or "random".
        seed: a whole number; the same seed gives the same image.
    """
    view, path = _generate(model, layer, channel, steps, weights, seed, progress)
    return path, f"{_reached(view)}\n\n{weights_used(view.weights)}"


@user_errors
def generate_on_page(model, layer, channel, steps, weights, seed, image, progress=gr.Progress()):
    """The button: the image for the picked channel, and how its activation compares with the photo's."""
    if channel is None:
        warn(NO_CHANNEL)
        return None, NO_CHANNEL
    view, path = _generate(model, layer, channel, steps, weights, seed, progress)
    comparison = ""
    if image:
        photo = float(explore.layer_stats(model, image, layer or None, weights).stats.mean[view.channel])
        times = f" ({view.activation / photo:.1f}× as high)" if photo > 0 and view.activation > 0 else ""
        comparison = f" Your photo reaches {photo:.4g}{times}."
    return path, f"{_reached(view)}{comparison}\n\n{weights_used(view.weights)}"


def build(state: PageState, layer: gr.Dropdown, channel: gr.Number, image: gr.Image | None = None) -> None:
    """The section's components and events (inside the current layout), under the channel view."""
    model, weights = state.model, state.weights
    with gr.Accordion("What the channel looks for (feature visualisation)", open=True, elem_id="featurevis-section"):
        gr.Markdown(HINT)
        with gr.Row():
            steps = gr.Slider(1, explore.FEATUREVIS_MAX_STEPS, value=256, step=1, label="Steps", scale=3, elem_id="featurevis-steps")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1, scale=1, elem_id="featurevis-seed")
        button = gr.Button(BUTTON, variant="secondary", elem_id="featurevis-button")
        with gr.Row():
            picture = gr.Image(label="An image this channel responds to strongly", type="filepath", interactive=False,
                               height=320, elem_id="featurevis-image", buttons=["download", "fullscreen"])
            caption = gr.Markdown(elem_id="featurevis-caption")
    api_only = gr.Button(visible=False)
    api_only.click(channel_visualization, [model, layer, channel, steps, weights, seed], [picture, caption],
                   api_name="channel_visualization", **HEAVY)
    photo = image if image is not None else gr.State(None)
    button.click(generate_on_page, [model, layer, channel, steps, weights, seed, photo], [picture, caption],
                 **HEAVY, api_visibility="private")
