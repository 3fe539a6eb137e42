"""Filters: a convolution's kernels drawn as a grid, with their histogram and per-filter norms."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import filters, layers, render, vocab
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome


@dataclass(frozen=True)
class FiltersView:
    """One convolution's filters drawn as a grid, with its weight histogram and per-filter norms."""

    filters: filters.Filters  # the kernels the model uses (fused with parallel branches where it has them)
    image: np.ndarray  # uint8[H,W,3]: one tile per output filter, row by row
    weights: WeightsOutcome  # which weights the filters are from
    conv: filters.ConvInfo  # the convolution chosen (its kind: depthwise, grouped, …)
    input_channel: int | None  # the input channel drawn, or None: all of them (RGB, or their mean)
    histogram: filters.Histogram  # of every value of filters.weight
    norms: filters.FilterNorms  # per output filter, dead / near-zero ones flagged

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


def list_convolutions(model: str | LoadedModel, weights: str = "pretrained") -> tuple[filters.ConvInfo, ...]:
    """Every ``Conv2d`` of the model in definition order, each with its kind (``"3×3"``,
    ``"depthwise 3×3"``, ``"grouped 3×3, 32 groups"``) and a ``label`` for a list; cached per model.

    >>> [c.name for c in list_convolutions("resnet50", weights="random")][-3:]
    ['layer4.2.conv1', 'layer4.2.conv2', 'layer4.2.conv3']
    """
    return filters.convolutions(load_model(model, weights))


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
    normalise = vocab.option(vocab.FilterScale, normalise, "normalisation")
    loaded = load_model(model, weights)
    convs = filters.convolutions(loaded)
    layer = layer or (layers.first_conv_name(loaded.model) if convs else "")
    conv = filters.get_convolution(convs, layer, loaded.spec.display)
    input_channel = None if input_channel == -1 and not isinstance(input_channel, bool) else input_channel
    filters.check_input_channel(input_channel, conv.inputs_per_filter)
    store = filters.filter_cache(loaded)
    key = ("view", layer, str(normalise), input_channel)
    view = store.get(key)
    if view is not None:
        return view
    found, histogram, norms = filters.analysed(loaded, layer)
    planes = filters.filter_planes(found.weight, input_channel, colour=conv.sees_image)
    view = FiltersView(found, render.render_filters(planes, normalise), loaded.weights, conv, input_channel, histogram, norms)
    return store.put(key, view, view.image.nbytes)
