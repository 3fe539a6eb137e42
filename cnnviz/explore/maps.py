"""Feature maps: a layer's channels for one photo, one channel drilled down, the layer's statistics, the
top-5 — and :func:`maps_page`, all of one page update from one query."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .. import activations, budget, layers, preprocess, receptive, render, vocab
from ..activations import Prediction
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome


@dataclass(frozen=True)
class FeatureMapsView:
    layer: layers.LayerInfo
    maps: torch.Tensor  # [C,H,W] float32: the layer's whole output for the image
    channels: torch.Tensor  # indices of the channels drawn, in drawing order
    image: np.ndarray  # uint8[H,W,3] grid, each tile labelled with its channel index, a colour bar below
    layout: render.GridLayout | None  # where each drawn channel's tile sits in ``image`` (None: none drawn)
    colormap: str  # the colormap drawn with ("auto" resolved: "gray" or, for a signed layer, "coolwarm")
    predictions: tuple[Prediction, ...]  # top-5, empty when the model is not an ImageNet classifier
    weights: WeightsOutcome  # which weights the maps are from
    source_size: tuple[int, int] | None  # (width, height) of the image before the model's resize and crop
    input_size: tuple[int, int]  # (height, width) of the picture the model saw (after its resize and crop)
    place: str  # where the layer sits: its block, stride and receptive field relative to the input


@dataclass(frozen=True)
class _Found:
    loaded: LoadedModel
    info: layers.LayerInfo
    input: preprocess.ModelInput
    maps: torch.Tensor  # Tensor[C,H,W] float32 (the kept tensor unless a copy was asked for)
    predictions: tuple[Prediction, ...]


def _layer_maps(model: str | LoadedModel, image, layer: str | None, weights: str, copy: bool = True) -> _Found:
    """The layer's maps for an image, from the kept maps when they are there (one pass otherwise)."""
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    found = preprocess.model_input(loaded, image)
    maps, predictions = activations.layer_maps(loaded, found.x, found.digest, info, copy)
    return _Found(loaded, info, found, maps, predictions)


def _grid(found: _Found, channels: str, n: int, colormap: str, normalise: str) -> FeatureMapsView:
    maps = found.maps
    chosen = activations.select_channels(maps, channels, n)
    grid, layout, drawn_with = render.draw_feature_grid(
        maps.numpy(), chosen.tolist(), colormap, normalise, (float(maps.min()), float(maps.max())))
    return FeatureMapsView(found.info, maps, chosen, grid, layout, drawn_with, found.predictions, found.loaded.weights,
                           found.input.source_size, tuple(found.input.x.shape[-2:]), layer_place(found.loaded, found.info))


def feature_maps(
    model: str | LoadedModel,
    image,
    layer: str | None = None,
    weights: str = "pretrained",
    channels: str = "first",
    n: int = 64,
    colormap: str = "auto",
    normalise: str = "channel",
) -> FeatureMapsView:
    """Feature maps of ``image`` (a path, PIL image or array) at ``layer`` (qualified module name;
    None: the first convolution), with the model's top-5 predictions.

    ``channels``: ``first`` N, ``top`` N by mean, ``top-max`` N by maximum, ``dead`` (all-zero) or
    ``all``. ``colormap="auto"`` draws non-negative layers in grey and signed ones with a diverging
    map centred on zero.

    >>> view = feature_maps("resnet18", "examples/coffee.png", "layer1", weights="random")
    >>> tuple(view.maps.shape)
    (64, 56, 56)
    """
    _check_drawing(channels, colormap, normalise)
    return _grid(_layer_maps(model, image, layer, weights), channels, n, colormap, normalise)


def _check_drawing(channels: str, colormap: str, normalise: str) -> None:
    vocab.option(vocab.Colormap, colormap, "colormap")
    vocab.option(vocab.MapScale, normalise, "normalisation")
    vocab.option(vocab.Channels, channels, "channel selection")


def layer_place(loaded: LoadedModel, info: layers.LayerInfo) -> str:
    """Where ``info`` sits in the network, in words: the block that holds it, its stride and its
    receptive field relative to the input (:mod:`cnnviz.receptive`), e.g. ``"in layer3.0 (Bottleneck)
    · stride 16 · receptive field 107×107 px of the 224×224 input"``.

    >>> loaded = load_model("alexnet", "random")
    >>> layer_place(loaded, layers.get_layer(loaded, "features.3"))
    'top level of features (Sequential) · stride 8 · receptive field 51×51 px of the 224×224 input'
    """
    parent = info.name.rpartition(".")[0]
    block = loaded.model.get_submodule(parent) if parent else loaded.model
    where = f"in {parent} ({type(block).__name__})" if parent else f"top level of {type(block).__name__}"
    if parent and isinstance(block, torch.nn.Sequential) and "." not in parent:
        where = f"top level of {parent} (Sequential)"
    geometry = receptive.layer_geometry(loaded, layers.list_layers(loaded)).get(info.name)
    return where if geometry is None else f"{where} · {geometry.describe(tuple(loaded.input_size[1:]))}"


def channel_at(
    model: str | LoadedModel, image, layer: str | None, x: float, y: float, weights: str = "pretrained",
    channels: str = "first", n: int = 64,
) -> int | None:
    """The channel whose tile holds pixel ``(x, y)`` of the grid :func:`feature_maps` draws with the
    same arguments; None for a gutter or outside the tiles.

    >>> channel_at("resnet18", "examples/coffee.png", "layer1", 70, 20, weights="random")
    1
    """
    vocab.option(vocab.Channels, channels, "channel selection")
    maps = _layer_maps(model, image, layer, weights, copy=False).maps
    chosen = activations.select_channels(maps, channels, n)
    if not len(chosen):
        return None
    index = render.feature_grid_layout(len(chosen), maps.shape[1], maps.shape[2], labelled=True).index_at(x, y)
    return None if index is None else int(chosen[index])


@dataclass(frozen=True)
class ChannelView:
    """One channel of a layer for one image, drawn onto the picture the model saw."""

    layer: layers.LayerInfo
    channel: int
    values: torch.Tensor  # [H,W] float32: the channel's map, exactly as computed
    stats: dict[str, float]  # mean, max, min, std, zeros, positive (fractions of positions)
    picture: np.ndarray  # uint8[S,S,3]: the model's input with its normalisation undone (its resize and crop)
    overlay: np.ndarray  # uint8[S,S,3]: the map upsampled (bilinear) to the picture and blended over it
    enlarged: np.ndarray  # uint8[H',W',3]: the map alone, enlarged with crisp pixels, a colour bar below
    colormap: str  # resolved colormap of the overlay and the enlarged map
    value_range: tuple[float, float]  # what the colour bar's ends mean
    weights: WeightsOutcome
    source_size: tuple[int, int] | None  # (width, height) of the image before the model's resize and crop


def channel(
    model: str | LoadedModel, image, layer: str | None, channel: int, weights: str = "pretrained",
    opacity: float = 0.5, colormap: str = "auto",
) -> ChannelView:
    """One channel of ``layer`` for ``image``: its map upsampled onto the picture the model saw and
    blended with ``opacity`` (0: the picture, 1: the map), the map alone enlarged, and its statistics.
    ``colormap="auto"``: inferno for a non-negative map, coolwarm centred on zero for a signed one.

    >>> view = channel("resnet18", "examples/coffee.png", "layer1", 3, weights="random")
    >>> view.overlay.shape, tuple(view.values.shape)
    ((224, 224, 3), (56, 56))
    """
    vocab.option(vocab.Colormap, colormap, "colormap")
    opacity = vocab.unit_interval(opacity, "Opacity")
    return _channel(_layer_maps(model, image, layer, weights, copy=False), channel, opacity, colormap)


def _channel(found: _Found, channel: int, opacity: float, colormap: str) -> ChannelView:
    count = found.maps.shape[0]
    c = vocab.whole(channel, 0, count - 1, "Channel", f" ({found.info.name} has {count} channels)")
    values = found.maps[c].clone()
    stats = activations.channel_stats(values[None])
    lo, hi = float(stats.min[0]), float(stats.max[0])
    signed = lo < 0
    name = ("coolwarm" if signed else "inferno") if colormap == "auto" else colormap
    centred = name in render.DIVERGING
    unit = render.scale_maps(values[None].numpy(), "channel", centred)[0]
    picture = preprocess.seen_image(found.loaded, found.input.x)
    heat = render.colorize(np.clip(render.upsample(unit, *picture.shape[:2]), 0, 1), name)
    half = max(abs(lo), abs(hi))
    ends = (-half, half) if centred else (lo, hi)
    words = (f"{ends[0]:.3g}", "0" if centred else "", f"{ends[1]:.3g}")
    big = render.colorize(render.resize_tiles(unit[None], max(picture.shape[:2]))[0], name)
    overlay = render.overlay(picture, heat, opacity)
    if lo == hi == 0:  # dead: the picture untouched (nothing fires anywhere) and the map striped, as in the grid
        big, overlay = render.dead_tile(*big.shape[:2]), picture.copy()
    enlarged = render.add_colour_bar(big, name, words)
    fields = ("mean", "max", "min", "std", "zeros", "positive")
    return ChannelView(
        found.info, c, values, {f: float(getattr(stats, f)[0]) for f in fields}, picture,
        overlay, enlarged, name, ends, found.loaded.weights, found.input.source_size,
    )


@dataclass(frozen=True)
class LayerStatsView:
    layer: layers.LayerInfo
    stats: activations.ChannelStats  # per channel, for this image
    weights: WeightsOutcome


def layer_stats(model: str | LoadedModel, image, layer: str | None = None, weights: str = "pretrained") -> LayerStatsView:
    """Per-channel statistics of ``layer`` for ``image``: mean, max, min, std, fraction of zeros and of
    positives, and which channels are dead (all zero).

    >>> view = layer_stats("resnet18", "examples/coffee.png", "layer1.0.relu", weights="random")
    >>> len(view.stats.mean), bool((view.stats.min >= 0).all())
    (64, True)
    """
    found = _layer_maps(model, image, layer, weights, copy=False)
    return LayerStatsView(found.info, activations.channel_stats(found.maps), found.loaded.weights)


@dataclass(frozen=True)
class MapsQuery:
    """Everything one Feature maps page update asks: frozen, so a page state can hold it and compare it.

    >>> MapsQuery("resnet18", "examples/coffee.png", "layer1", weights="random", channel=3).channel
    3
    """

    model: str | LoadedModel
    image: object  # a path, PIL image or array
    layer: str | None = None
    weights: str = "pretrained"
    channels: str = "first"
    n: int = 64
    colormap: str = "auto"
    normalise: str = "channel"
    channel: int | None = None  # the channel drilled down, or None: none
    opacity: float = 0.5
    channel_colormap: str = "auto"


@dataclass(frozen=True)
class MapsPage:
    maps: FeatureMapsView
    stats: LayerStatsView
    channel: ChannelView | None  # None when the query names no channel


def maps_page(query: MapsQuery) -> MapsPage:
    """The grid, the layer's statistics and the drilled-down channel of one page update, from one model
    load, one input and at most one pass (the same values :func:`feature_maps`, :func:`layer_stats` and
    :func:`channel` give one by one).

    >>> page = maps_page(MapsQuery("resnet18", "examples/coffee.png", "layer1", weights="random", channel=3))
    >>> page.maps.maps.shape[0], len(page.stats.stats.mean), page.channel.channel
    (64, 64, 3)
    """
    q = query
    _check_drawing(q.channels, q.colormap, q.normalise)
    vocab.option(vocab.Colormap, q.channel_colormap, "colormap")
    opacity = vocab.unit_interval(q.opacity, "Opacity")
    found = _layer_maps(q.model, q.image, q.layer, q.weights, copy=False)
    grid = _grid(found, q.channels, q.n, q.colormap, q.normalise)
    grid = dataclasses.replace(grid, maps=found.maps.clone())  # the caller's own copy, as feature_maps gives
    stats = LayerStatsView(found.info, activations.channel_stats(found.maps), found.loaded.weights)
    drilled = None if q.channel is None else _channel(found, q.channel, opacity, q.channel_colormap)
    return MapsPage(grid, stats, drilled)


def layer_activations(
    model: str | LoadedModel, image, layer: str | None = None, weights: str = "pretrained",
) -> tuple[layers.LayerInfo, torch.Tensor, WeightsOutcome]:
    """``(layer, maps, weights)``: the layer's whole output for ``image`` as ``Tensor[C,H,W]`` float32,
    the values :func:`feature_maps` draws (what ``/activations`` exports as ``.npy``).

    Raises:
        InvalidOptionError: the pass, the maps' copy and their file would not fit one request's budget
            (:mod:`cnnviz.budget`); the sentence says how large a layer would.
    """
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    budget.check_export(loaded, info)
    found = _layer_maps(loaded, image, layer, weights)
    return found.info, found.maps, found.loaded.weights


def predict(model: str | LoadedModel, image, weights: str = "pretrained", k: int = 5) -> list[Prediction]:
    """Top-k classes of ``image`` with probabilities (empty for models without ImageNet labels).

    >>> [p.label for p in predict("timm/tf_efficientnet_lite0", "examples/coffee.png")][:1]
    ['espresso']
    """
    loaded = load_model(model, weights)
    x = preprocess.to_input(loaded, preprocess.open_image(image))
    with loaded.lock:
        logits = activations.run(loaded.model, x)
    return activations.top_k(logits, loaded.categories, k)
