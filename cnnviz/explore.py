"""The app's operations by model name, as the UI, the HTTP API and notebooks use them.

Each function takes plain values (a model name, an image, option strings), validates them, and
returns data plus a ready-to-show ``uint8[H,W,3]`` image where there is one.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import activations, attribution as attribution_mod, budget, checkpoint as checkpoint_mod, filters as filters_mod, layers, preprocess, receptive, registry, render, summary as summary_mod
from .activations import Prediction
from .hooks import Stopped, interruptible, stop_when  # noqa: F401  (Stopped, stop_when: for the UI)
from .errors import CnnvizError, InvalidImageError, InvalidOptionError, quoted
from .registry import LoadedModel, load_model
from .weights import WeightsOutcome

_LOCK = threading.Lock()
MAX_DEPTH = 8


class KeptMaps:
    """Layer outputs of recent images, kept so that a layer switch needs no forward pass, bounded by
    bytes (not by images: one image of a 600 px EfficientNet is several GB of maps).

    Entries are ``Tensor[C,H,W]`` float32 per (model, image digest, layer), evicted least recently
    used first until their total is within ``budget`` bytes. One pass keeps the layer asked for and
    as many neighbours as fit in ``budget // 4`` bytes (:meth:`window`), so a few users' windows fit at
    once; a single layer larger than the whole budget is returned but not kept.
    """

    def __init__(self, budget: int) -> None:
        self.budget = max(0, int(budget))
        self.nbytes = 0
        self._items: OrderedDict[tuple[int, bytes, str], tuple[weakref.ref, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, loaded: LoadedModel, digest: bytes, layer: str, copy: bool = True) -> torch.Tensor | None:
        """A copy of the kept maps (``copy=False``: the kept tensor, to be read only), or None."""
        with self._lock:
            item = self._items.get((id(loaded), digest, layer))
            if item is None or item[0]() is not loaded:
                return None
            self._items.move_to_end((id(loaded), digest, layer))
            return item[1].clone() if copy else item[1]

    def window(self, found: tuple[layers.LayerInfo, ...], info: layers.LayerInfo) -> list[layers.LayerInfo]:
        """``info`` and its neighbours (one after, one before, …) while their maps fit in a quarter of
        the budget, in forward order."""
        share, total = self.budget // 4, info.nbytes
        lo = hi = found.index(info)
        grew = True
        while grew:  # once a side does not fit it never will (the total only grows): the window is contiguous
            grew = False
            for j in (hi + 1, lo - 1):
                if 0 <= j < len(found) and total + found[j].nbytes <= share:
                    total += found[j].nbytes
                    lo, hi, grew = min(lo, j), max(hi, j), True
        return list(found[lo : hi + 1])

    def put(self, loaded: LoadedModel, digest: bytes, maps: dict[str, torch.Tensor]) -> None:
        """Keep ``maps`` (name -> Tensor[C,H,W]); evict the oldest entries beyond the budget."""
        with self._lock:
            for name, tensor in maps.items():
                size = _nbytes(tensor)
                if size > self.budget:
                    continue
                if (id(loaded), digest, name) in self._items:
                    self._drop((id(loaded), digest, name))
                self._items[(id(loaded), digest, name)] = (weakref.ref(loaded), tensor)
                self.nbytes += size
            for key in [k for k, (ref, _) in self._items.items() if ref() is None]:  # models gone from the cache
                self._drop(key)
            while self.nbytes > self.budget and self._items:
                self._drop(next(iter(self._items)))

    def _drop(self, key: tuple[int, bytes, str]) -> None:
        _, tensor = self._items.pop(key)
        self.nbytes -= _nbytes(tensor)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


def _nbytes(tensor: torch.Tensor) -> int:
    """Bytes a kept tensor holds alive: its whole storage (a view may keep a larger one)."""
    return tensor.untyped_storage().nbytes()


KEPT = KeptMaps(int(float(os.environ.get("CNNVIZ_KEPT_MB", "1024")) * 2**20))


def _remember(cache: OrderedDict, key, value, limit: int):
    """Put ``value`` in an LRU ``cache`` bounded to ``limit`` entries (call under ``_LOCK``)."""
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def _check(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise InvalidOptionError(f"Unknown {what} {quoted(value)}; use one of: {', '.join(valid)}.")
    return value


def architecture(model: str, weights: str = "pretrained", depth: int = 3) -> summary_mod.Summary:
    """Per-layer table and totals of a model at a nesting depth (1 = top-level blocks).

    >>> s = architecture("resnet50", weights="random", depth=1)
    >>> round(s.total_macs / 1e9, 1)
    4.1
    """
    if not isinstance(depth, (int, float)) or not 1 <= int(depth) <= MAX_DEPTH:
        raise InvalidOptionError(f"Depth must be a whole number from 1 to {MAX_DEPTH}, not {quoted(depth)}.")
    depth = int(depth)
    loaded = load_model(model, weights)

    def compute() -> summary_mod.Summary:
        with loaded.lock, interruptible(loaded.model):
            return summary_mod.summarize(loaded.model, loaded.input_size, depth=depth)

    return loaded.memo(f"summary.depth{depth}", compute)


@dataclass(frozen=True)
class FiltersView:
    """One convolution's filters drawn as a grid, with its weight histogram and per-filter norms."""

    filters: filters_mod.Filters  # the kernels the model uses (fused with parallel branches where it has them)
    image: np.ndarray  # uint8[H,W,3]: one tile per output filter, row by row
    weights: WeightsOutcome  # which weights the filters are from
    conv: filters_mod.ConvInfo  # the convolution chosen (its kind: depthwise, grouped, …)
    input_channel: int | None  # the input channel drawn, or None: all of them (RGB, or their mean)
    histogram: filters_mod.Histogram  # of every value of filters.weight
    norms: filters_mod.FilterNorms  # per output filter, dead / near-zero ones flagged

    @property
    def colour(self) -> bool:
        """True when the tiles are RGB (the layer sees the image and all its input channels are drawn)."""
        return self.input_channel is None and self.conv.sees_image and self.filters.weight.shape[1] == 3

    @property
    def drawn(self) -> str:
        """What each tile shows, as a sentence fragment for a caption (e.g. "in grey: the mean over each
        filter's 512 input channels")."""
        per = self.filters.weight.shape[1]
        if self.conv.depthwise:
            ratio = self.conv.out_channels // self.conv.in_channels
            sees = "input channel k" if ratio == 1 else f"input channel k // {ratio}"
            return f"in grey: depthwise, each filter has one input channel (filter k sees {sees})"
        group = f" (grouped: {self.conv.groups} groups of {per} input channels)" if self.conv.groups > 1 else ""
        if self.colour:
            return "in colour: each filter's R, G, B input channels"
        if self.input_channel is None:
            return f"in grey: the mean over each filter's {per} input channels{group}"
        return f"in grey: input channel {self.input_channel} of each filter's {per}{group}"


FILTERS_CACHE_BYTES = int(float(os.environ.get("CNNVIZ_FILTERS_MB", "64")) * 2**20)  # per model


class _FilterCache:
    """One model's convolution list, per-layer weights/histogram/norms and drawn grids, least recently
    used first out once their bytes pass ``budget`` (weights ``4·O·I·kh·kw`` bytes, grids ``H·W·3``).
    Filters of a loaded model never change (it is read-only), so entries need no invalidation; the
    whole cache goes with the model (kept on it: ``loaded.memo``)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.nbytes = 0
        self.convs: tuple[filters_mod.ConvInfo, ...] | None = None
        self._items: OrderedDict[tuple, tuple[object, int]] = OrderedDict()

    def get(self, key: tuple):
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: tuple, value, nbytes: int):
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.budget and len(self._items) > 1:  # the newest stays, even when alone too big
            self.nbytes -= self._items.popitem(last=False)[1][1]
        return value


def _filter_cache(loaded: LoadedModel) -> _FilterCache:
    return loaded.memo("filters.cache", lambda: _FilterCache(FILTERS_CACHE_BYTES))


def _convolutions(loaded: LoadedModel) -> tuple[filters_mod.ConvInfo, ...]:
    cache = _filter_cache(loaded)
    if cache.convs is None:
        cache.convs = filters_mod.list_convolutions(loaded.model)
    return cache.convs


def list_convolutions(model: str | LoadedModel, weights: str = "pretrained") -> tuple[filters_mod.ConvInfo, ...]:
    """Every ``Conv2d`` of the model in definition order, each with its kind (``"3×3"``,
    ``"depthwise 3×3"``, ``"grouped 3×3, 32 groups"``) and a ``label`` for a list; cached per model.

    >>> [c.name for c in list_convolutions("resnet50", weights="random")][-3:]
    ['layer4.2.conv1', 'layer4.2.conv2', 'layer4.2.conv3']
    """
    return _convolutions(model if isinstance(model, LoadedModel) else load_model(model, weights))


def filter_grid(
    model: str | LoadedModel,
    weights: str = "pretrained",
    normalise: str = "layer",
    layer: str | None = None,
    input_channel: int | None = None,
) -> FiltersView:
    """A convolution's filters drawn as a grid, with a histogram of its weights and per-filter norms.

    ``layer`` is a convolution's qualified name (see :func:`list_convolutions`); None or "" means the
    first convolution. Tiles are RGB when the layer sees the image and ``input_channel`` is None;
    otherwise grey: the slice of input channel ``input_channel`` (0 … I/groups − 1), or the mean over
    the input channels when None (or -1). Cached per model, so switching back to a layer is instant.

    >>> filter_grid("alexnet", weights="random").filters.weight.shape
    torch.Size([64, 3, 11, 11])
    >>> view = filter_grid("resnet50", "random", layer="layer4.2.conv2", input_channel=7)
    >>> view.filters.weight.shape, view.conv.kind, len(view.norms.norms)
    (torch.Size([512, 512, 3, 3]), '3×3', 512)

    Raises:
        UnknownLayerError: ``layer`` is not a convolution of the model (the sentence suggests close names).
        InvalidOptionError: an unknown normalisation, or an input channel the layer does not have.
    """
    _check(normalise, render.FILTER_NORMALISATIONS, "normalisation")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    convs = _convolutions(loaded)
    layer = layer or (layers.first_conv_name(loaded.model) if convs else "")
    conv = filters_mod.get_convolution(convs, layer, loaded.spec.display)
    input_channel = None if input_channel == -1 and not isinstance(input_channel, bool) else input_channel
    filters_mod.check_input_channel(input_channel, conv.inputs_per_filter)
    cache = _filter_cache(loaded)
    with _LOCK:
        view = cache.get(("view", layer, normalise, input_channel))
    if view is not None:
        return view
    with _LOCK:
        analysed = cache.get(("layer", layer))
    if analysed is None:
        with loaded.lock:  # may run the convolution once: keep it out of another request's hooked pass
            found = filters_mod.conv_filters(loaded.model, layer)
        analysed = (found, filters_mod.weight_histogram(found.weight), filters_mod.filter_norms(found.weight))
        with _LOCK:
            cache.put(("layer", layer), analysed, found.weight.nbytes)
    found, histogram, norms = analysed
    planes = filters_mod.filter_planes(found.weight, input_channel, colour=conv.sees_image)
    view = FiltersView(found, render.render_filters(planes, normalise), loaded.weights, conv, input_channel, histogram, norms)
    with _LOCK:
        return cache.put(("view", layer, normalise, input_channel), view, view.image.nbytes)


@dataclass(frozen=True)
class FeatureMapsView:
    layer: layers.LayerInfo
    maps: torch.Tensor  # [C,H,W] float32: the layer's whole output for the image
    channels: torch.Tensor  # indices of the channels drawn, in drawing order
    image: np.ndarray  # uint8[H,W,3] grid, each tile labelled with its channel index, a colour bar below
    layout: render.GridLayout  # where each drawn channel's tile sits in ``image``
    colormap: str  # the colormap drawn with ("auto" resolved: "gray" or, for a signed layer, "coolwarm")
    predictions: tuple[Prediction, ...]  # top-5, empty when the model is not an ImageNet classifier
    weights: WeightsOutcome  # which weights the maps are from
    source_size: tuple[int, int] | None  # (width, height) of the image before the model's resize and crop
    input_size: tuple[int, int]  # (height, width) of the picture the model saw (after its resize and crop)
    place: str  # where the layer sits: its block, stride and receptive field relative to the input


def feature_maps(
    model: str,
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
    _check(colormap, render.COLORMAPS, "colormap")
    _check(normalise, render.NORMALISATIONS, "normalisation")
    _check(channels, activations.CHANNEL_MODES, "channel selection")
    found = _layer_maps(model, image, layer, weights)
    maps = found.maps
    chosen = activations.select_channels(maps, channels, n)
    grid, layout, drawn_with = _draw_maps(maps, chosen, colormap, normalise)
    return FeatureMapsView(found.info, maps, chosen, grid, layout, drawn_with,
                           found.predictions, found.loaded.weights, found.source_size, tuple(found.x.shape[-2:]),
                           layer_place(found.loaded, found.info))


def _draw_maps(
    maps: torch.Tensor, chosen: torch.Tensor, colormap: str, normalise: str
) -> tuple[np.ndarray, render.GridLayout | None, str]:
    """The grid of channels ``chosen`` of ``maps`` (``Tensor[C,H,W]``), each tile labelled with its
    index, a colour bar below; its layout; the colormap it was drawn with (``auto`` resolved)."""
    lo, hi = float(maps.min()), float(maps.max())
    signed = lo < 0
    whole = (lo, hi) if normalise == "layer" else None  # all channels, not just those shown
    if not len(chosen):
        return _empty_grid(), None, render.resolve_colormap(colormap, signed)
    grid = render.render_feature_maps(maps[chosen].numpy(), colormap, normalise, value_range=whole,
                                      labels=chosen.tolist(), signed=signed, colour_bar=True)
    layout = render.feature_grid_layout(len(chosen), maps.shape[1], maps.shape[2], labelled=True)
    return grid, layout, render.resolve_colormap(colormap, signed)


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


def _empty_grid() -> np.ndarray:
    """What an empty selection (no dead channel to show) draws: one gutter-coloured square."""
    return np.full((64, 64, 3), render.GUTTER, np.uint8)


@dataclass(frozen=True)
class _Found:
    loaded: LoadedModel
    info: layers.LayerInfo
    x: torch.Tensor  # the model's input, Tensor[1,3,H,W]
    maps: torch.Tensor  # Tensor[C,H,W] float32, the caller's own copy
    predictions: tuple[Prediction, ...]
    source_size: tuple[int, int] | None


def _layer_maps(model: str, image, layer: str | None, weights: str, copy: bool = True) -> _Found:
    """The layer's maps for an image, from the kept maps when they are there (one pass otherwise).
    ``copy=False``: the kept tensor itself, for callers that only read it."""
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    x, digest, size = _model_input(loaded, image)
    maps, predictions = _analyse_cached(loaded, x, digest, info, copy)
    return _Found(loaded, info, x, maps, predictions, size)


def channel_at(
    model: str, image, layer: str | None, x: float, y: float, weights: str = "pretrained",
    channels: str = "first", n: int = 64,
) -> int | None:
    """The channel whose tile holds pixel ``(x, y)`` of the grid :func:`feature_maps` draws with the
    same arguments; None for a gutter or outside the tiles.

    >>> channel_at("resnet18", "examples/coffee.png", "layer1", 70, 20, weights="random")
    1
    """
    _check(channels, activations.CHANNEL_MODES, "channel selection")
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
    model: str, image, layer: str | None, channel: int, weights: str = "pretrained", opacity: float = 0.5,
    colormap: str = "auto",
) -> ChannelView:
    """One channel of ``layer`` for ``image``: its map upsampled onto the picture the model saw and
    blended with ``opacity`` (0: the picture, 1: the map), the map alone enlarged, and its statistics.
    ``colormap="auto"``: inferno for a non-negative map, coolwarm centred on zero for a signed one.

    >>> view = channel("resnet18", "examples/coffee.png", "layer1", 3, weights="random")
    >>> view.overlay.shape, tuple(view.values.shape)
    ((224, 224, 3), (56, 56))
    """
    _check(colormap, render.COLORMAPS, "colormap")
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0.0 <= float(opacity) <= 1.0:
        raise InvalidOptionError(f"Opacity must be a number from 0 to 1, not {quoted(opacity)}.")
    found = _layer_maps(model, image, layer, weights, copy=False)
    count = found.maps.shape[0]
    if isinstance(channel, bool) or not isinstance(channel, (int, float)) or int(channel) != channel or not 0 <= channel < count:
        raise InvalidOptionError(
            f"Channel must be a whole number from 0 to {count - 1} ({found.info.name} has {count} channels), not {quoted(channel)}."
        )
    c = int(channel)
    values = found.maps[c].clone()
    stats = activations.channel_stats(values[None])
    lo, hi = float(stats.min[0]), float(stats.max[0])
    signed = lo < 0
    name = ("coolwarm" if signed else "inferno") if colormap == "auto" else colormap
    centred = name in render.DIVERGING
    unit = render.scale_maps(values[None].numpy(), "channel", centred)[0]
    picture = preprocess.seen_image(found.loaded, found.x)
    heat = render.colorize(np.clip(render.upsample(unit, *picture.shape[:2]), 0, 1), name)
    half = max(abs(lo), abs(hi))
    ends = (-half, half) if centred else (lo, hi)
    words = (f"{ends[0]:.3g}", "0" if centred else "", f"{ends[1]:.3g}")
    big = render.colorize(render.resize_tiles(unit[None], max(picture.shape[:2]))[0], name)
    overlay = render.overlay(picture, heat, float(opacity))
    if lo == hi == 0:  # dead: the picture untouched (nothing fires anywhere) and the map striped, as in the grid
        big, overlay = render.dead_tile(*big.shape[:2]), picture.copy()
    enlarged = render.add_colour_bar(big, name, words)
    fields = ("mean", "max", "min", "std", "zeros", "positive")
    return ChannelView(
        found.info, c, values, {f: float(getattr(stats, f)[0]) for f in fields}, picture,
        overlay, enlarged, name, ends, found.loaded.weights, found.source_size,
    )


@dataclass(frozen=True)
class LayerStatsView:
    layer: layers.LayerInfo
    stats: activations.ChannelStats  # per channel, for this image
    weights: WeightsOutcome


def layer_stats(model: str, image, layer: str | None = None, weights: str = "pretrained") -> LayerStatsView:
    """Per-channel statistics of ``layer`` for ``image``: mean, max, min, std, fraction of zeros and of
    positives, and which channels are dead (all zero).

    >>> view = layer_stats("resnet18", "examples/coffee.png", "layer1.0.relu", weights="random")
    >>> len(view.stats.mean), bool((view.stats.min >= 0).all())
    (64, True)
    """
    found = _layer_maps(model, image, layer, weights, copy=False)
    return LayerStatsView(found.info, activations.channel_stats(found.maps), found.loaded.weights)


def layer_activations(model: str, image, layer: str | None = None, weights: str = "pretrained") -> tuple[layers.LayerInfo, torch.Tensor, WeightsOutcome]:
    """``(layer, maps, weights)``: the layer's whole output for ``image`` as ``Tensor[C,H,W]`` float32,
    the values :func:`feature_maps` draws (what ``/activations`` exports as ``.npy``).

    Raises:
        InvalidOptionError: the pass, the maps' copy and their file would not fit one request's budget
            (:mod:`cnnviz.budget`); the sentence says how large a layer would.
    """
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    budget.check_export(loaded, info)
    found = _layer_maps(model, image, layer, weights)
    return found.info, found.maps, found.loaded.weights


def _model_input(loaded: LoadedModel, image) -> tuple[torch.Tensor, bytes, tuple[int, int] | None]:
    """The model's input for ``image``, a digest of it, and the image's (width, height) before the
    model's resize and crop. A file already seen (same path, size and modification time: a layer
    switch on the same upload) is not decoded and transformed again."""
    key = None
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        stat = os.stat(image)
        key = (os.fspath(image), stat.st_size, stat.st_mtime_ns)
        with _LOCK:
            hit = _inputs(loaded).get(key)
        if hit is not None:
            return hit
    picture = preprocess.open_image(image)
    x = preprocess.to_input(loaded, picture)
    entry = (x, hashlib.blake2b(x.cpu().numpy().tobytes(), digest_size=16).digest(), picture.size)
    if key is not None:
        with _LOCK:
            _remember(_inputs(loaded), key, entry, 8)
    return entry


def _inputs(loaded: LoadedModel) -> OrderedDict:
    """The model's recent inputs: file key (path, size, mtime) -> (input, digest, size); LRU, 8 kept."""
    return loaded.memo("explore.inputs", OrderedDict)


def _predictions(loaded: LoadedModel) -> OrderedDict:
    """The model's recent top-5s: image digest -> predictions; LRU, 32 kept."""
    return loaded.memo("explore.predictions", OrderedDict)


def _analyse_cached(
    loaded: LoadedModel, x: torch.Tensor, digest: bytes, info: layers.LayerInfo, copy: bool = True
) -> tuple[torch.Tensor, tuple[Prediction, ...]]:
    """The layer's maps and the top-5 for an image, with as few passes as the byte budget allows.

    A new image costs one pass, which gives the predictions and keeps the layers around the one asked
    for (as many as :data:`KEPT` allows per pass); a switch to a kept layer costs no pass, a switch
    beyond them one pass that stops right after the new window."""
    per_model = _predictions(loaded)
    with _LOCK:
        known = per_model.get(digest)
    maps = KEPT.get(loaded, digest, info.name, copy)
    if maps is not None and known is not None:
        return maps, known
    store, known = _capture(loaded, x, digest, KEPT.window(layers.list_layers(loaded), info), known)
    return (store[info.name].clone() if copy else store[info.name]), known


def _capture(
    loaded: LoadedModel, x: torch.Tensor, digest: bytes, wanted: list[layers.LayerInfo],
    known: tuple[Prediction, ...] | None,
) -> tuple[dict[str, torch.Tensor], tuple[Prediction, ...]]:
    """One pass of ``x`` capturing ``wanted`` (kept in :data:`KEPT`) and, when the top-5 is not
    ``known`` yet, the logits for it (remembered per image digest); the pass stops after the last
    wanted layer when the top-5 is known."""
    with loaded.lock, interruptible(loaded.model):
        store, logits = activations.capture_layers(loaded, wanted, x, with_logits=known is None)
    if known is None:
        with _LOCK:
            known = _remember(_predictions(loaded), digest, tuple(activations.top_k(logits, loaded.categories)), 32)
    KEPT.put(loaded, digest, store)
    return store, known


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


# --- what the UI needs besides the views (the UI calls nothing but this module) -------------------

WEIGHT_CHOICES = registry.WEIGHT_CHOICES
COLORMAPS = render.COLORMAPS
encode = render.encode  # uint8[H,W,3] -> PNG/JPEG bytes for the browser
readable_macs = summary_mod.readable_macs


def curated_models() -> list[tuple[str, str]]:
    """(label, key) of every curated model, in registry order, for a model picker."""
    return [(spec.label, spec.key) for spec in registry.curated_specs()]


@dataclass(frozen=True)
class ModelView:
    """A loaded model as a picker shows it: which one, with which weights, its layers and the default."""

    spec: registry.ModelSpec
    weights: WeightsOutcome
    device: str
    layers: tuple[layers.LayerInfo, ...]
    default_layer: str  # the first convolution
    note: str | None  # why some outputs are not listed (transformers), else None


def select_model(model: str, weights: str = "pretrained") -> ModelView:
    """Load ``model`` (cached) and list its layers.

    >>> select_model("resnet18", "random").default_layer
    'conv1'
    """
    loaded = load_model(model, weights)
    return ModelView(loaded.spec, loaded.weights, loaded.device.type, layers.list_layers(loaded),
                     layers.get_layer(loaded, None).name, layers.listing_note(loaded))


def weights_used(model: str, weights: str = "pretrained") -> WeightsOutcome:
    """Which weights ``model`` has now for the ``weights`` choice (loads it, or takes it from the cache)."""
    return load_model(model, weights).weights


@dataclass(frozen=True)
class Startup:
    model: str  # the key to open on
    notice: str | None  # why it is not the default model, or None


def startup_model() -> Startup:
    """The default model when its pretrained weights can be had, else the bundled offline model."""
    default = load_model(registry.DEFAULT_MODEL, "pretrained")
    if default.weights.pretrained:
        return Startup(registry.DEFAULT_MODEL, None)
    offline = registry.get_spec(registry.OFFLINE_MODEL)
    return Startup(registry.OFFLINE_MODEL, (
        f"{default.weights.notice} The app opened on **{offline.display}** instead: its ImageNet weights ship "
        f"with the app. {default.spec.display} is still in the list, with random weights."
    ))


# --- live frames (the webcam): one pass per frame, nothing kept, nothing written to disk -----------

MIN_FRAME_SIDE = 16  # pixels; smaller frames carry nothing a model can see
MAX_FRAME_SIDE = 4096
MAX_FRAME_PIXELS = 3840 * 2160  # a 4K camera; anything larger is not a webcam frame
# An encoded frame: it arrives as base64 inside a request of at most 1 MB (the server's body limit), so
# 704 KB at most (a VGA JPEG, what the page asks the camera for, is ~50 KB; 1080p ~300 KB).
MAX_FRAME_BYTES = 704 * 2**10
FRAME_FORMATS = ("JPEG", "PNG", "WEBP")  # what browsers' canvas.toDataURL / toBlob produce


def _check_frame_size(width: int, height: int) -> None:
    if min(width, height) < MIN_FRAME_SIDE:
        raise InvalidImageError(
            f"The camera frame is {width}×{height} pixels; a frame needs at least {MIN_FRAME_SIDE} pixels "
            "on each side. Check that the camera is on and sending pictures."
        )
    if max(width, height) > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS:
        raise InvalidImageError(
            f"The camera frame is {width}×{height} pixels, larger than this app accepts "
            f"({MAX_FRAME_SIDE} px a side, {MAX_FRAME_PIXELS / 1e6:.1f} megapixels). Use a lower camera resolution."
        )


def check_frame(frame: object) -> np.ndarray:
    """``frame`` if it is a camera frame the live view can use: ``uint8[H,W,3]`` (or ``[H,W]`` grey,
    ``[H,W,4]`` RGBA), each side from 16 to 4096 pixels, at most 8.3 megapixels; else
    :class:`InvalidImageError` saying what was wrong.

    >>> check_frame(np.zeros((480, 640, 3), np.uint8)).shape
    (480, 640, 3)
    """
    if not isinstance(frame, np.ndarray):
        raise InvalidImageError(f"A camera frame must be an image array (uint8, height×width×3), not {type(frame).__name__}.")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise InvalidImageError(
            f"A camera frame must be height×width×3 (RGB), not an array of shape {quoted(tuple(frame.shape))}."
        )
    if frame.dtype != np.uint8:
        raise InvalidImageError(f"A camera frame must hold 8-bit values (uint8), not {frame.dtype}.")
    _check_frame_size(frame.shape[1], frame.shape[0])
    return frame


def decode_frame(data: bytes) -> np.ndarray:
    """A camera frame as a browser encodes it (JPEG, PNG or WebP bytes) -> ``uint8[H,W,3]``, decoded in
    memory. Only those three decoders are used, and the size is checked before any pixel is decoded.

    >>> decode_frame(render.encode(np.zeros((32, 48, 3), np.uint8), "jpeg")).shape
    (32, 48, 3)
    """
    if not data:
        raise InvalidImageError("The camera sent an empty frame. Check that the camera is on.")
    if len(data) > MAX_FRAME_BYTES:
        raise InvalidImageError(
            f"The camera frame is {len(data) // 1024:,} KB; this app accepts frames up to "
            f"{MAX_FRAME_BYTES // 1024:,} KB. Use a lower camera resolution."
        )
    try:
        with Image.open(io.BytesIO(data), formats=FRAME_FORMATS) as image:
            _check_frame_size(*image.size)
            return np.asarray(image.convert("RGB"))
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise InvalidImageError("The camera frame is not a JPEG, PNG or WebP picture this app can read.") from e


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
    model: str,
    frame: np.ndarray,
    layer: str | None = None,
    weights: str = "pretrained",
    channels: str = "first",
    n: int = 64,
    colormap: str = "auto",
    normalise: str = "channel",
) -> LiveView:
    """Feature maps and top-5 of one camera ``frame`` (``uint8[H,W,3]``, see :func:`check_frame`) at
    ``layer``, as fast as a frame can go: the model's own transform on the array (no file, no encoding),
    one forward pass that gives both the layer and the logits (the top-5 needs the whole network, so it
    cannot stop early), and nothing kept afterwards (a stream of frames would only churn the caches).
    The grid is drawn as :func:`feature_maps` draws it.

    >>> view = live_maps("resnet18", np.zeros((480, 640, 3), np.uint8), "conv1", weights="random")
    >>> tuple(view.maps.shape), len(view.predictions)
    ((64, 112, 112), 5)
    """
    _check(colormap, render.COLORMAPS, "colormap")
    _check(normalise, render.NORMALISATIONS, "normalisation")
    _check(channels, activations.CHANNEL_MODES, "channel selection")
    check_frame(frame)
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    x = preprocess.to_input(loaded, preprocess.open_image(frame))
    with loaded.lock, interruptible(loaded.model):
        store, logits = activations.capture_layers(loaded, [info], x, with_logits=True)
    maps = store[info.name]
    chosen = activations.select_channels(maps, channels, n)
    lo, hi = float(maps.min()), float(maps.max())
    signed = lo < 0
    if len(chosen):
        drawn = maps[: len(chosen)] if channels == "first" else maps[chosen]  # "first": a view, not a copy
        whole = (lo, hi) if normalise == "layer" else None  # all channels, not just those shown
        grid = render.render_feature_maps(drawn.numpy(), colormap, normalise, value_range=whole,
                                          labels=chosen.tolist(), signed=signed, colour_bar=True)
    else:
        grid = _empty_grid()
    predictions = tuple(activations.top_k(logits, loaded.categories))
    return LiveView(info, maps, chosen, grid, render.resolve_colormap(colormap, signed), predictions, loaded.weights)


def find_layer(model: str, weights: str = "pretrained", name: str | None = None) -> layers.LayerInfo:
    """The layer ``name`` of ``model`` (None or "": the first convolution), as the layer picker lists it.

    Raises:
        UnknownLayerError: the model has no layer of that name with a map output (the message
            suggests close matches).

    >>> find_layer("resnet18", "random", "layer1.0.conv1").shape
    (64, 56, 56)
    """
    return layers.get_layer(load_model(model, weights), name)


# --- attribution: why the model decided (class activation maps) and Zeiler–Fergus projections ----

REQUEST_SECONDS = budget.REQUEST_SECONDS  # one request's deadline (the UI stops work past it)
CAM_METHODS = attribution_mod.CAM_METHODS
CAM_NAMES = attribution_mod.CAM_NAMES
PROJECTIONS = attribution_mod.PROJECTIONS


@dataclass(frozen=True)
class AttributionView:
    overlay: np.ndarray  # uint8[H,W,3]: the map over the picture the model saw, a colour bar below
    map: np.ndarray  # float32[h,w]: the raw class activation map at the target layer's resolution
    class_index: int  # the class explained
    label: str  # its label ("class N" for a model without labels)
    probability: float  # the model's probability for it
    top_label: str  # the model's own top class
    layer: layers.LayerInfo  # the target layer
    method: str
    weights: WeightsOutcome


def _label(loaded: LoadedModel, index: int) -> str:
    labels = loaded.categories or ()
    return labels[index] if 0 <= index < len(labels) else f"class {index}"


def attribution(
    model: str, image, method: str = "gradcam", target: str | int = "", layer: str = "",
    weights: str = "pretrained", opacity: float = 0.5,
) -> AttributionView:
    """A class activation map (Grad-CAM, Grad-CAM++, LayerCAM or Score-CAM) of ``image`` for ``target``
    (a class index or label; empty: the top class) at ``layer`` (empty: the last map before pooling),
    drawn over the picture the model saw.

    Raises:
        InvalidOptionError: an unknown method or class, or a map that would not fit one request's
            budget (:mod:`cnnviz.budget`): the sentence says what would (a layer with fewer channels
            for Score-CAM, a later layer, Grad-CAM). Score-CAM's batches are made smaller to fit.

    >>> view = attribution("timm/tf_efficientnet_lite0", "examples/coffee.png")
    >>> view.label, view.map.shape, view.overlay.shape[1]
    ('espresso', (7, 7), 224)
    """
    attribution_mod.check_method(method, CAM_METHODS, CAM_NAMES)
    if not isinstance(opacity, (int, float)) or not 0.0 <= float(opacity) <= 1.0:
        raise InvalidOptionError(f"Opacity must be between 0 and 1, not {quoted(opacity)}.")
    loaded = load_model(model, weights)
    x, _digest, _size = _model_input(loaded, image)
    wanted = attribution_mod.class_index(loaded, target)
    info = attribution_mod.resolve_layer(loaded, layer or None)
    batch = budget.check_cam(loaded, info, method)  # before any pass: refuses what would not fit, sizes Score-CAM's batches
    found = attribution_mod.class_activation_map(loaded, x, method, wanted, info, batch)
    raw = found.map.numpy().astype(np.float32)
    return AttributionView(_cam_picture(loaded, x, raw, float(opacity)), raw, found.class_index,
                           _label(loaded, found.class_index), found.probability,
                           _label(loaded, found.top_class), found.layer, method, loaded.weights)


def _cam_picture(loaded: LoadedModel, x: torch.Tensor, raw: np.ndarray, opacity: float) -> np.ndarray:
    """A class activation map ``float32[h,w]`` over the picture the model saw, a colour bar below."""
    picture = preprocess.seen_image(loaded, x)
    h, w = picture.shape[:2]
    unit = render.scale_maps(render.upsample(raw, h, w)[None], "channel", centred=False)[0]
    if float(raw.max()) <= 0:
        unit = np.zeros_like(unit)
    heat = render.colorize(unit, "inferno")
    return render.add_colour_bar(render.overlay(picture, heat, opacity), "inferno", ("0", "", f"max {float(raw.max()):.3g}"))


@dataclass(frozen=True)
class ProjectionView:
    image: np.ndarray  # uint8[H,W*2+gap,3]: the projection beside the picture crop it covers
    projection: np.ndarray  # float32[3,H,W]: the signed signal at the input
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in the picture where the projection is not ~zero
    layer: layers.LayerInfo
    channel: int
    position: tuple[int, int]  # (row, column) of the projected unit in the layer's map
    activation: float
    method: str
    note: str  # "" or why the projection is only the plain gradient
    weights: WeightsOutcome


def projection(
    model: str, image, layer: str, channel: int, method: str = "guided_backprop", weights: str = "pretrained",
) -> ProjectionView:
    """Zeiler–Fergus projection: the strongest unit of ``channel`` at ``layer`` for ``image`` taken
    back to pixel space (guided backpropagation or deconvnet), beside the part of the picture it covers.

    >>> projection("resnet18", "examples/coffee.png", "layer2", 3, weights="random").projection.shape
    (3, 224, 224)
    """
    attribution_mod.check_method(method, PROJECTIONS, attribution_mod.PROJECTION_NAMES)
    loaded = load_model(model, weights)
    x, _digest, _size = _model_input(loaded, image)
    info = attribution_mod.resolve_layer(loaded, layer or None)
    budget.check_projection(loaded, info, attribution_mod.PROJECTION_NAMES[method])
    found = attribution_mod.project(loaded, x, info, channel, method)
    signal = _finite(found.image.numpy().astype(np.float32), loaded, "projection")
    picture = preprocess.seen_image(loaded, x)
    shown = _signed_picture(signal)
    strength = np.abs(signal).max(axis=0)
    peak = float(strength.max())
    rows, cols = np.nonzero(strength > 0.01 * peak) if peak > 0 else (np.array([0]), np.array([0]))
    box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    crop = np.full_like(picture, render.GUTTER)
    top, left, bottom, right = box
    crop[top:bottom, left:right] = picture[top:bottom, left:right]
    gap = np.empty((picture.shape[0], 8, 3), np.uint8)
    gap[...] = render.GUTTER
    side = np.concatenate([shown, gap, crop], axis=1)
    return ProjectionView(side, signal, box, found.layer, found.channel, found.position, found.activation,
                          method, attribution_mod.projection_note(found), loaded.weights)


def _finite(signal: np.ndarray, loaded: LoadedModel, what: str) -> np.ndarray:
    """``signal`` when every value is finite; else the sentence (weights so large that float32 overflows)."""
    if not np.isfinite(signal).all():
        raise CnnvizError(
            f"The {what} overflowed: {loaded.spec.display}'s weights make values too large for 32-bit floats on "
            "the way back to the pixels, so there is nothing to draw. Pick an earlier layer, or check the weights."
        )
    return signal


def _signed_picture(signal: np.ndarray) -> np.ndarray:
    """A signed signal at the input (``float32[3,H,W]``) as a picture ``uint8[H,W,3]``: grey is zero,
    brighter or darker colours the signal's sign, scaled by its largest magnitude (Zeiler & Fergus's way)."""
    half = max(float(np.abs(signal).max()), render.EPS)
    return np.rint(np.clip(0.5 + signal / (2 * half), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


@dataclass(frozen=True)
class GuidedGradCamView:
    image: np.ndarray  # uint8[H,W*2+gap,3]: guided Grad-CAM beside the picture the model saw
    signal: np.ndarray  # float32[3,H,W]: guided backpropagation of the class score × the upsampled Grad-CAM
    class_index: int
    label: str
    probability: float
    layer: layers.LayerInfo  # Grad-CAM's target layer
    weights: WeightsOutcome


def guided_gradcam(model: str, image, target: str | int = "", layer: str = "", weights: str = "pretrained") -> GuidedGradCamView:
    """Guided Grad-CAM (Selvaraju et al., 2017) of ``image`` for ``target`` (a class index or label; empty:
    the top class): the pixels that raise the class score (guided backpropagation), kept where the class's
    Grad-CAM at ``layer`` (empty: the last map before pooling) is on.

    >>> view = guided_gradcam("timm/tf_efficientnet_lite0", "examples/coffee.png")
    >>> view.label, view.signal.shape
    ('espresso', (3, 224, 224))
    """
    loaded = load_model(model, weights)
    x, _digest, _size = _model_input(loaded, image)
    wanted = attribution_mod.class_index(loaded, target)
    info = attribution_mod.resolve_layer(loaded, layer or None)
    budget.check_guided_gradcam(loaded, info)
    signal, cam = attribution_mod.guided_gradcam(loaded, x, wanted, info)
    values = _finite(signal.numpy().astype(np.float32), loaded, "Guided Grad-CAM")
    picture = preprocess.seen_image(loaded, x)
    gap = np.empty((picture.shape[0], 8, 3), np.uint8)
    gap[...] = render.GUTTER
    side = np.concatenate([_signed_picture(values), gap, picture], axis=1)
    return GuidedGradCamView(side, values, cam.class_index, _label(loaded, cam.class_index), cam.probability, cam.layer,
                             loaded.weights)


# --- what a channel looks for (feature visualisation, cnnviz.featurevis) --------------------------

import math  # noqa: E402  (kept with the section that uses it: other sections are edited in parallel)

from . import featurevis  # noqa: E402

FEATUREVIS_SIZE = 128  # px: Lucent's default; 256 steps on ResNet-18 stay well under 30 s on 2 CPU cores
FEATUREVIS_MAX_STEPS = 2048
FEATUREVIS_KEEP = 64  # generated images kept per model (each ~50 KB), oldest out


@dataclass(frozen=True)
class ChannelVisualizationView:
    """An image generated to excite one channel of a layer (activation maximisation)."""

    layer: layers.LayerInfo
    channel: int
    image: np.ndarray  # uint8[H,W,3]: the generated image, at the working size
    activation: float  # the channel's mean for that image (the uint8 image, one eval pass, no transformation)
    steps: int
    seed: int
    size: tuple[int, int]  # (height, width) it was generated at
    weights: WeightsOutcome


def _whole_in(value, lo: int, hi: int, what: str, extra: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value or not lo <= value <= hi:
        raise InvalidOptionError(f"{what} must be a whole number from {lo} to {hi}{extra}, not {quoted(value)}.")
    return int(value)


def _featurevis_size(loaded: LoadedModel, info: layers.LayerInfo, mean_std) -> tuple[int, int]:
    """The working size for ``info``: 128 px when the model runs there (a probe pass, remembered per
    layer), else the model's own input size (ViTs' token layers, windowed attention)."""
    full = tuple(loaded.input_size[1:])
    if min(full) <= FEATUREVIS_SIZE or info.layout == "tokens":
        return full
    sizes = loaded.memo("featurevis.sizes", dict)
    if info.name not in sizes:
        small = (FEATUREVIS_SIZE, FEATUREVIS_SIZE)
        probe = featurevis.normalise(torch.full((1, 3, *small), 0.5, device=loaded.device), mean_std)
        try:
            featurevis.channel_activation(loaded.model, info, 0, probe, loaded.lock)
            sizes[info.name] = small
        except Stopped:
            raise
        except Exception:  # noqa: BLE001  (a model that needs its own input size: any shape error)
            sizes[info.name] = full
    return sizes[info.name]


def channel_visualization(
    model: str, layer: str | None, channel: int, steps: int = 256, weights: str = "pretrained", seed: int = 0,
    progress=None,
) -> ChannelVisualizationView:
    """An image that ``channel`` of ``layer`` responds to strongly, generated by gradient ascent from
    noise (:mod:`cnnviz.featurevis`: Fourier-space, colour-decorrelated image, random jitter, scale and
    rotation each step), with the channel's mean activation for it. ``progress(step, steps)`` is called
    after each step. Cached per (model, weights, layer, channel, steps, seed): 64 per model.

    >>> view = channel_visualization("resnet18", "layer1", 3, steps=2, weights="random")
    >>> view.image.shape, view.image.dtype
    ((128, 128, 3), dtype('uint8'))

    Raises:
        InvalidOptionError: a channel the layer does not have, steps outside 1–2048, a seed that is not
            a whole number from 0 to 2**32 − 1, or more steps than fit one request's time budget
            (:mod:`cnnviz.budget`; the sentence says how many fit).
        UnknownLayerError: the model has no such layer (the sentence suggests close names).
    """
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    count = info.shape[0]
    c = _whole_in(channel, 0, count - 1, "Channel", f" ({info.name} has {count} channels)")
    steps = _whole_in(steps, 1, FEATUREVIS_MAX_STEPS, "Steps")
    seed = _whole_in(seed, 0, 2**32 - 1, "Seed")
    cache = loaded.memo("featurevis.cache", OrderedDict)
    key = (info.name, c, steps, seed)
    with _LOCK:
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
    mean_std = preprocess.normalisation(loaded.transform)
    size = _featurevis_size(loaded, info, mean_std)
    budget.check_featurevis(loaded, info, c, size, steps)  # before the first step: the most steps that fit, if not these
    made = featurevis.visualize_channel(loaded.model, info, c, size, mean_std, steps, seed, progress, loaded.lock)
    final = torch.from_numpy(made.image).to(loaded.device).permute(2, 0, 1)[None].float() / 255
    activation = featurevis.channel_activation(loaded.model, info, c, featurevis.normalise(final, mean_std), loaded.lock)
    view = ChannelVisualizationView(info, c, made.image, activation, steps, seed, size, loaded.weights)
    with _LOCK:
        return _remember(cache, key, view, FEATUREVIS_KEEP)


@dataclass(frozen=True)
class AttributionChoices:
    layers: tuple[layers.LayerInfo, ...]  # every listed layer (any can be the target)
    default_layer: str  # the last map before pooling
    labels: tuple[str, ...]  # the model's class labels (empty when it has none)


def attribution_choices(model: str, weights: str = "pretrained") -> AttributionChoices:
    """What the Attribution tab offers for ``model``: its layers, the default target layer, its labels.

    >>> attribution_choices("resnet18", "random").default_layer
    'layer4'
    """
    loaded = load_model(model, weights)
    return AttributionChoices(layers.list_layers(loaded), attribution_mod.default_layer(loaded).name, tuple(loaded.categories or ()))


# --- compare: two models (or weights, or images) side by side --------------------------------------

COMPARE_VIEWS = ("filters", "stages", "cam")  # first-layer filters, maps at each stage, Grad-CAM
COMPARE_WORDS = {"filters": "first-layer filters", "stages": "maps at each stage", "cam": "Grad-CAM"}
COMPARE_TILES = 16  # channels per stage grid: the 16 strongest by mean, the same count on both sides
STAGE_STRIDES = receptive.STAGE_STRIDES  # the strides compared: 1/4 … 1/32 of the input


@dataclass(frozen=True)
class CompareSide:
    """One column of a comparison: which model, with which weights, and its top-5 for its image."""

    model: str  # the registry key
    display: str
    weights: WeightsOutcome
    predictions: tuple[Prediction, ...]  # empty when the model has no labels

    @property
    def title(self) -> str:
        """E.g. ``"AlexNet · pretrained"``, ``"AlexNet · random weights"``; an upload with random weights
        says they are not the checkpoint's."""
        if self.weights.pretrained:
            return f"{self.display} · {'its weights' if self.model.startswith(checkpoint_mod.UPLOAD_PREFIX) else 'pretrained'}"
        return f"{self.display} · random weights{', not the checkpoint' if self.model.startswith(checkpoint_mod.UPLOAD_PREFIX) else ''}"


@dataclass(frozen=True)
class ComparePair:
    """One row of a comparison: the same view of both sides at the same depth."""

    title: str  # "first convolution", "stride 8 (1/8 of the input)", "Grad-CAM"
    a: np.ndarray  # uint8[H,W,3]; an empty square when side A has nothing at this depth
    b: np.ndarray
    caption_a: str  # names the layer (or says why there is none)
    caption_b: str

    @property
    def same_size(self) -> bool:
        """True when both pictures have the same size (a slider can lay one over the other)."""
        return self.a.shape == self.b.shape


@dataclass(frozen=True)
class CompareView:
    view: str  # one of COMPARE_VIEWS
    pairs: tuple[ComparePair, ...]
    a: CompareSide
    b: CompareSide


def compare(
    model_a: str, model_b: str, image, weights_a: str = "pretrained", weights_b: str = "random",
    view: str = "filters", image_b=None,
) -> CompareView:
    """The same view of two models side by side, on the same image (or, with ``image_b``, side B on
    another image: two photos through one model when ``model_b == model_a``).

    ``view``: ``filters`` (each first convolution's filters), ``stages`` (the first convolution and the
    output of each stage, matched by stride: 1/4, 1/8, 1/16, 1/32 of the input, see
    :func:`cnnviz.receptive.list_stages`; the 16 strongest channels of each), or ``cam`` (Grad-CAM at
    each model's default layer; on one photo, when both models have the same labels, B explains A's top
    class, so both answer the same question; on two photos, each its own). Each side also gets its top-5.
    Both sides' costs together must fit one request's budget (:func:`cnnviz.budget.check_pair`).

    >>> view = compare("resnet18", "timm/resnet18", "examples/coffee.png", "random", "random", "stages")
    >>> [p.title for p in view.pairs][:2], view.pairs[1].caption_a
    (['first convolution', 'stride 4 (1/4 of the input)'], 'layer1 · Sequential · 64×56×56')
    """
    _check(view, COMPARE_VIEWS, "comparison view")
    loaded_a, loaded_b = load_model(model_a, weights_a), load_model(model_b, weights_b)
    input_a = _model_input(loaded_a, image)
    input_b = _model_input(loaded_b, image if image_b is None else image_b)
    budget.check_pair(loaded_a, loaded_b, lambda loaded: _compare_cost(loaded, view), COMPARE_WORDS[view])
    if view == "filters":
        pairs, (top_a, top_b) = _compare_filters(loaded_a, loaded_b), (_top5(loaded_a, *input_a[:2]), _top5(loaded_b, *input_b[:2]))
    elif view == "stages":
        (rows_a, top_a), (rows_b, top_b) = _stage_rows(loaded_a, *input_a[:2]), _stage_rows(loaded_b, *input_b[:2])
        pairs = _pair_rows(rows_a, rows_b)
    else:
        pairs, (top_a, top_b) = _compare_cams(loaded_a, loaded_b, input_a[0], input_b[0], one_photo=image_b is None)
    side_a = CompareSide(loaded_a.spec.key, loaded_a.spec.display, loaded_a.weights, top_a)
    side_b = CompareSide(loaded_b.spec.key, loaded_b.spec.display, loaded_b.weights, top_b)
    return CompareView(view, tuple(pairs), side_a, side_b)


def _compare_cost(loaded: LoadedModel, view: str) -> budget.Cost:
    """What one side of a comparison costs: Grad-CAM at its default layer, else one pass (the stages'
    maps, or the top-5 beside the filters)."""
    if view == "cam":
        return budget.cam_cost(loaded, attribution_mod.default_layer(loaded), "gradcam")
    return budget.forward_cost(loaded)


def _top5(loaded: LoadedModel, x: torch.Tensor, digest: bytes) -> tuple[Prediction, ...]:
    """The model's top-5 for its input ``x`` (remembered per image digest, like the feature-map views')."""
    with _LOCK:
        known = _predictions(loaded).get(digest)
    return known if known is not None else _capture(loaded, x, digest, [], None)[1]


def _compare_filters(loaded_a: LoadedModel, loaded_b: LoadedModel) -> list[ComparePair]:
    def side(loaded: LoadedModel) -> tuple[np.ndarray, str]:
        if not _convolutions(loaded):
            return _empty_grid(), f"{loaded.spec.display} has no convolution"
        found = filter_grid(loaded)
        w = found.filters.weight
        return found.image, f"{found.conv.name} · {w.shape[0]} filters {w.shape[-2]}×{w.shape[-1]}, {found.drawn}"

    (a, caption_a), (b, caption_b) = side(loaded_a), side(loaded_b)
    return [ComparePair("first convolution", a, b, caption_a, caption_b)]


def _stage_rows(loaded: LoadedModel, x: torch.Tensor, digest: bytes) -> tuple[dict[str, tuple[np.ndarray, str]], tuple[Prediction, ...]]:
    """Row title -> (grid, caption) for the first convolution and each stage, and the top-5: one pass
    for whatever is not kept already (the maps it captures are kept for the Feature maps tab too)."""
    found = layers.list_layers(loaded)
    wanted = {"first convolution": layers.get_layer(loaded, None)}
    by_name = {info.name: info for info in found}
    for stage in receptive.list_stages(loaded, found):
        wanted[_stride_title(stage.stride)] = by_name[stage.layer]
    with _LOCK:
        known = _predictions(loaded).get(digest)
    maps = {info.name: KEPT.get(loaded, digest, info.name, copy=False) for info in wanted.values()}
    missing = [info for info in dict.fromkeys(wanted.values()) if maps[info.name] is None]
    if missing or known is None:
        store, known = _capture(loaded, x, digest, missing, known)
        maps.update(store)
    rows = {}
    for title, info in wanted.items():
        layer_maps = maps[info.name]
        chosen = activations.select_channels(layer_maps, "top", COMPARE_TILES)
        grid, _layout, _drawn_with = _draw_maps(layer_maps, chosen, "auto", "channel")
        c, h, w = info.shape
        rows[title] = (grid, f"{info.name} · {info.type} · {c}×{h}×{w}")
    return rows, known


def _stride_title(stride: int) -> str:
    return f"stride {stride} (1/{stride} of the input)"


def _pair_rows(rows_a: dict, rows_b: dict) -> list[ComparePair]:
    titles = ["first convolution"] + [_stride_title(s) for s in receptive.STAGE_STRIDES]
    pairs = []
    for title in titles:
        if title not in rows_a and title not in rows_b:
            continue
        a, caption_a = rows_a.get(title, (_empty_grid(), "no map at this stride"))
        b, caption_b = rows_b.get(title, (_empty_grid(), "no map at this stride"))
        pairs.append(ComparePair(title, a, b, caption_a, caption_b))
    return pairs


def _compare_cams(loaded_a: LoadedModel, loaded_b: LoadedModel, x_a: torch.Tensor, x_b: torch.Tensor, one_photo: bool):
    """Each side's Grad-CAM; on one photo with the same labels on both sides, B explains A's top class
    (one question, two models); on two photos each side explains its own top class."""
    found_a = attribution_mod.class_activation_map(loaded_a, x_a, "gradcam")
    same_question = one_photo and loaded_a.categories is not None and loaded_a.categories == loaded_b.categories
    found_b = attribution_mod.class_activation_map(loaded_b, x_b, "gradcam", found_a.class_index if same_question else None)
    pictures, tops = [], []
    for loaded, x, found in ((loaded_a, x_a, found_a), (loaded_b, x_b, found_b)):
        raw = found.map.numpy().astype(np.float32)
        pictures.append(_cam_picture(loaded, x, raw, 0.5))
        caption = (f"Grad-CAM for {_label(loaded, found.class_index)} (class {found.class_index}, "
                   f"probability {found.probability:.1%}) at {found.layer.name}")
        tops.append((caption, tuple(activations.top_k(found.logits, loaded.categories))))
    pair = ComparePair("Grad-CAM", pictures[0], pictures[1], tops[0][0], tops[1][0])
    return [pair], (tops[0][1], tops[1][1])


# --- the user's own checkpoint ---------------------------------------------------------------------

CHECKPOINT_LIMIT_MB = checkpoint_mod.MAX_CHECKPOINT_BYTES / 2**20  # the largest checkpoint file accepted


def load_checkpoint(model: str, path, labels=None) -> registry.CheckpointReport:
    """Load a checkpoint file (``.safetensors``, or a PyTorch state dict read with
    ``torch.load(weights_only=True)``) into ``model``'s architecture; the report's ``name``
    (``upload/<digest>``) then works as ``model`` in every function here while the server holds it.
    See :func:`cnnviz.registry.load_checkpoint`."""
    return registry.load_checkpoint(model, path, labels)
