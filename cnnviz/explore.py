"""The app's operations by model name, as the UI, the HTTP API and notebooks use them.

Each function takes plain values (a model name, an image, option strings), validates them, and
returns data plus a ready-to-show ``uint8[H,W,3]`` image where there is one.
"""
from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from . import activations, filters as filters_mod, layers, preprocess, render, summary as summary_mod
from .activations import Prediction
from .errors import InvalidOptionError
from .registry import LoadedModel, load_model

_SUMMARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loaded -> file key -> (input, digest)
_PREDICTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loaded -> image digest -> top-5
_LOCK = threading.Lock()
_ACTIVATIONS: OrderedDict[tuple[int, bytes], tuple[weakref.ref, dict]] = OrderedDict()  # every layer of recent images
MAX_KEPT_IMAGES = 2  # bounds that memory: one image's maps are ~5–250 MB depending on the model
MAX_DEPTH = 8


def _remember(cache: OrderedDict, key, value, limit: int):
    """Put ``value`` in an LRU ``cache`` bounded to ``limit`` entries (call under ``_LOCK``)."""
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def _check(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise InvalidOptionError(f"Unknown {what} {value!r}; use one of: {', '.join(valid)}.")
    return value


def architecture(model: str, weights: str = "pretrained", depth: int = 3) -> summary_mod.Summary:
    """Per-layer table and totals of a model at a nesting depth (1 = top-level blocks).

    >>> s = architecture("resnet50", weights="random", depth=1)
    >>> round(s.total_macs / 1e9, 1)
    4.1
    """
    if not isinstance(depth, (int, float)) or not 1 <= int(depth) <= MAX_DEPTH:
        raise InvalidOptionError(f"Depth must be a whole number from 1 to {MAX_DEPTH}, not {depth!r}.")
    depth = int(depth)
    loaded = load_model(model, weights)
    with _LOCK:
        per_model = _SUMMARIES.setdefault(loaded, {})
        cached = per_model.get(depth)
    if cached is None:
        with loaded.lock:
            cached = summary_mod.summarize(loaded.model, loaded.input_size, depth=depth)
        with _LOCK:
            per_model[depth] = cached
    return cached


@dataclass(frozen=True)
class FiltersView:
    filters: filters_mod.Filters
    image: np.ndarray  # uint8[H,W,3]


def filter_grid(model: str, weights: str = "pretrained", normalise: str = "layer") -> FiltersView:
    """The first convolution's filters, drawn as a grid (colour when they see RGB).

    >>> filter_grid("alexnet", weights="random").filters.weight.shape
    torch.Size([64, 3, 11, 11])
    """
    _check(normalise, render.FILTER_NORMALISATIONS, "normalisation")
    loaded = load_model(model, weights)
    with loaded.lock:  # runs the convolution once: keep it out of another request's hooked pass
        found = filters_mod.first_layer_filters(loaded)
    return FiltersView(found, render.render_filters(found.weight.numpy(), normalise))


@dataclass(frozen=True)
class FeatureMapsView:
    layer: layers.LayerInfo
    maps: torch.Tensor  # [C,H,W] float32: the layer's whole output for the image
    channels: torch.Tensor  # indices of the channels drawn, in drawing order
    image: np.ndarray  # uint8[H,W,3] grid
    predictions: tuple[Prediction, ...]  # top-5, empty when the model is not an ImageNet classifier


def feature_maps(
    model: str,
    image,
    layer: str | None = None,
    weights: str = "pretrained",
    channels: str = "first",
    n: int = 64,
    colormap: str = "gray",
    normalise: str = "channel",
) -> FeatureMapsView:
    """Feature maps of ``image`` (a path, PIL image or array) at ``layer`` (qualified module name;
    None: the first convolution), with the model's top-5 predictions.

    >>> view = feature_maps("resnet18", "examples/coffee.png", "layer1", weights="random")
    >>> tuple(view.maps.shape)
    (64, 56, 56)
    """
    _check(colormap, render.COLORMAPS, "colormap")
    _check(normalise, render.NORMALISATIONS, "normalisation")
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    x, digest = _model_input(loaded, image)
    maps, predictions = _analyse_cached(loaded, x, digest, info.name)
    chosen = activations.select_channels(maps, channels, n)
    whole = (float(maps.min()), float(maps.max())) if normalise == "layer" else None  # all channels, not just those shown
    grid = render.render_feature_maps(maps[chosen].numpy(), colormap, normalise, value_range=whole)
    return FeatureMapsView(info, maps, chosen, grid, predictions)


def _model_input(loaded: LoadedModel, image) -> tuple[torch.Tensor, bytes]:
    """The model's input for ``image`` and a digest of it. A file already seen (same path, size and
    modification time: a layer switch on the same upload) is not decoded and transformed again."""
    key = None
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        stat = os.stat(image)
        key = (os.fspath(image), stat.st_size, stat.st_mtime_ns)
        with _LOCK:
            hit = _INPUTS.setdefault(loaded, OrderedDict()).get(key)
        if hit is not None:
            return hit
    x = preprocess.to_input(loaded, preprocess.open_image(image))
    entry = (x, hashlib.blake2b(x.cpu().numpy().tobytes(), digest_size=16).digest())
    if key is not None:
        with _LOCK:
            _remember(_INPUTS.setdefault(loaded, OrderedDict()), key, entry, 8)
    return entry


def _analyse_cached(loaded: LoadedModel, x: torch.Tensor, digest: bytes, layer: str) -> tuple[torch.Tensor, tuple[Prediction, ...]]:
    """A new image costs one forward pass (this layer and the predictions). The first switch to another
    layer of the same image keeps every layer's output from one full pass, so later switches cost no pass."""
    with _LOCK:
        per_model = _PREDICTIONS.setdefault(loaded, OrderedDict())
        known = per_model.get(digest)
        kept = _ACTIVATIONS.get((id(loaded), digest))
    if known is not None and kept is not None and kept[0]() is loaded and layer in kept[1]:
        return kept[1][layer][0].to("cpu", torch.float32, copy=True), known
    if known is None:
        with loaded.lock:
            result = activations.analyse(loaded, x, layer, with_predictions=True)
        with _LOCK:
            known = _remember(per_model, digest, tuple(result.predictions or ()), 32)
        return result.maps, known
    with loaded.lock:
        store, _ = activations.capture_all(loaded.model, layers.list_layers(loaded), x)
    with _LOCK:
        _remember(_ACTIVATIONS, (id(loaded), digest), (weakref.ref(loaded), store), MAX_KEPT_IMAGES)
    if layer in store:
        return store[layer][0].to("cpu", torch.float32, copy=True), known
    with loaded.lock:
        return activations.analyse(loaded, x, layer, with_predictions=False).maps, known


def predict(model: str, image, weights: str = "pretrained", k: int = 5) -> list[Prediction]:
    """Top-k classes of ``image`` with probabilities (empty for models without ImageNet labels).

    >>> [p.label for p in predict("timm/tf_efficientnet_lite0", "examples/coffee.png")][:1]
    ['espresso']
    """
    loaded = load_model(model, weights)
    x = preprocess.to_input(loaded, preprocess.open_image(image))
    with loaded.lock:
        logits = activations.run(loaded.model, x)
    return activations.top_k(logits, loaded.categories, k)
