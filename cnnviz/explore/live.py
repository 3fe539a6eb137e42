"""Live frames (the webcam): one pass per frame, nothing kept, nothing written to disk."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import activations, layers, preprocess, render, vocab
from ..activations import Prediction
from ..hooks import interruptible
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome


@dataclass(frozen=True)
class LiveView:
    """One camera frame through a layer: what the live view shows."""

    layer: layers.LayerInfo
    maps: torch.Tensor  # [C,H,W] float32: the layer's whole output for the frame
    channels: torch.Tensor  # indices of the channels drawn, in drawing order
    image: np.ndarray  # uint8[H,W,3] grid, drawn as the Feature maps view draws it
    colormap: str  # the colormap drawn with ("auto" resolved)
    predictions: tuple[Prediction, ...]  # top-5, empty when the model is not an ImageNet classifier
    weights: WeightsOutcome  # which weights the maps are from


def live_maps(
    model: str | LoadedModel,
    frame: np.ndarray,
    layer: str | None = None,
    weights: str = "pretrained",
    channels: str = "first",
    n: int = 64,
    colormap: str = "auto",
    normalise: str = "channel",
) -> LiveView:
    """Feature maps and top-5 of one camera ``frame`` (``uint8[H,W,3]``, see
    :func:`cnnviz.preprocess.check_frame`) at ``layer``, as fast as a frame can go: the model's own transform
    on the array (no file, no encoding), one forward pass that gives both the layer and the logits (the top-5
    needs the whole network, so it cannot stop early), and nothing kept afterwards (a stream of frames would
    only churn the caches). The grid is drawn as :func:`cnnviz.explore.feature_maps` draws it.

    >>> view = live_maps("resnet18", np.zeros((480, 640, 3), np.uint8), "conv1", weights="random")
    >>> tuple(view.maps.shape), len(view.predictions)
    ((64, 112, 112), 5)
    """
    vocab.option(vocab.Colormap, colormap, "colormap")
    vocab.option(vocab.MapScale, normalise, "normalisation")
    channels = vocab.option(vocab.Channels, channels, "channel selection")
    preprocess.check_frame(frame)
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    x = preprocess.to_input(loaded, preprocess.open_image(frame))
    with loaded.lock, interruptible(loaded.model):
        store, logits = activations.capture_layers(loaded, [info], x, with_logits=True)
    maps = store[info.name]
    chosen = activations.select_channels(maps, channels, n)
    grid, _layout, drawn_with = render.draw_feature_grid(
        maps.numpy(), chosen.tolist(), colormap, normalise, (float(maps.min()), float(maps.max())))
    predictions = tuple(activations.top_k(logits, loaded.categories))
    return LiveView(info, maps, chosen, grid, drawn_with, predictions, loaded.weights)
