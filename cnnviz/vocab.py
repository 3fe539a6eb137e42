"""Option vocabularies (``StrEnum``) and the few validators every query uses: the allowed values live here,
once, and every refusal is :class:`~cnnviz.errors.InvalidOptionError` naming the parameter and what is valid
(torchinfo's ``enums.py`` way: ``Mode(mode)`` and one error type).

>>> Channels("top-max") is Channels.TOP_MAX, str(Weights.RANDOM)
(True, 'random')
>>> option(Colormap, "jet", "colormap")
Traceback (most recent call last):
...
cnnviz.errors.InvalidOptionError: Unknown colormap 'jet'; use one of: auto, gray, viridis, magma, inferno, cividis, coolwarm.
"""
from __future__ import annotations

import math
import os
from enum import StrEnum
from typing import TypeVar

from .errors import InvalidOptionError, did_you_mean, quoted


class Weights(StrEnum):
    """Which weights the user asks for (what was loaded is :class:`cnnviz.pretrained.WeightsOutcome`)."""

    PRETRAINED = "pretrained"  # the library's trained weights (an upload: the user's checkpoint)
    RANDOM = "random"  # the same architecture, randomly initialised (seeded by the model's name)


class Channels(StrEnum):
    """Which channels of a layer a grid draws (see :func:`cnnviz.activations.select_channels`)."""

    FIRST = "first"
    TOP = "top"  # strongest by mean
    TOP_MAX = "top-max"  # strongest by maximum
    DEAD = "dead"  # all zero for this image
    ALL = "all"


class Colormap(StrEnum):
    AUTO = "auto"  # grey for non-negative maps, coolwarm centred on zero for signed ones
    GRAY = "gray"
    VIRIDIS = "viridis"
    MAGMA = "magma"
    INFERNO = "inferno"
    CIVIDIS = "cividis"
    COOLWARM = "coolwarm"


class MapScale(StrEnum):
    """How feature maps are scaled to colours."""

    CHANNEL = "channel"  # each map to its own range
    LAYER = "layer"  # one range for the whole layer


class FilterScale(StrEnum):
    """How filters are scaled to colours."""

    LAYER = "layer"  # one range for the whole layer (the seed's)
    FILTER = "filter"  # each filter to its own range


class CamMethod(StrEnum):
    """Class activation maps at a target layer (torchcam)."""

    GRADCAM = "gradcam"
    GRADCAMPP = "gradcampp"
    LAYERCAM = "layercam"
    SCORECAM = "scorecam"
    XGRADCAM = "xgradcam"
    SMOOTHGRADCAMPP = "smoothgradcampp"
    SSCAM = "sscam"  # Score-CAM over noisy copies of the maps: one pass per channel and sample
    ISCAM = "iscam"  # Score-CAM integrated over scaled masks: one pass per channel and step

    @property
    def label(self) -> str:
        return {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "layercam": "LayerCAM", "scorecam": "Score-CAM",
                "xgradcam": "XGrad-CAM", "smoothgradcampp": "Smooth Grad-CAM++", "sscam": "SS-CAM", "iscam": "IS-CAM"}[self]


class AttentionMethod(StrEnum):
    """Vision-transformer attributions read from the attention itself (no target layer)."""

    ROLLOUT = "rollout"  # Abnar & Zuidema 2020
    CHEFER = "chefer"  # gradient-weighted rollout, Chefer et al. 2021
    LEGRAD = "legrad"  # Bousselham et al. 2024 (torchcam; torchvision VisionTransformer only)

    @property
    def label(self) -> str:
        return {"rollout": "attention rollout", "chefer": "gradient-weighted rollout", "legrad": "LeGrad"}[self]


def attribution_method(value: object) -> CamMethod | AttentionMethod:
    """``value`` as a class activation map or an attention method, else :class:`InvalidOptionError`
    listing both.

    >>> attribution_method("rollout").label, attribution_method("gradcam").label
    ('attention rollout', 'Grad-CAM')
    """
    for kind in (CamMethod, AttentionMethod):
        if value in values(kind):
            return kind(value)
    listed = ", ".join(f"{m.value} ({m.label})" for kind in (CamMethod, AttentionMethod) for m in kind)
    valid = values(CamMethod) + values(AttentionMethod)
    hint = did_you_mean(str(value), valid) if isinstance(value, str) else ""
    raise InvalidOptionError(f"Unknown method {quoted(value)}; use one of: {listed}.{hint}")


class Projection(StrEnum):
    """Zeiler–Fergus projections back to pixel space."""

    GUIDED_BACKPROP = "guided_backprop"
    DECONVNET = "deconvnet"

    @property
    def label(self) -> str:
        return {"guided_backprop": "guided backpropagation", "deconvnet": "deconvnet"}[self]


class Intervention(StrEnum):
    """What an intervention does to the chosen channels of a layer (:mod:`cnnviz.intervene`)."""

    ZERO = "zero"  # ablate: set to 0
    MEAN = "mean"  # ablate: set to the channel's mean over its map, on this photo
    SCALE = "scale"  # multiply by a factor from 0 to 3
    KEEP = "keep"  # keep only these channels: every other channel set to 0

    @property
    def label(self) -> str:
        return {"zero": "set to zero", "mean": "set to their mean on this photo", "scale": "scaled",
                "keep": "kept, every other channel zeroed"}[self]


class CompareKind(StrEnum):
    FILTERS = "filters"  # first-layer filters
    STAGES = "stages"  # maps at each stage
    CAM = "cam"  # Grad-CAM

    @property
    def label(self) -> str:
        return {"filters": "first-layer filters", "stages": "maps at each stage", "cam": "Grad-CAM"}[self]


class ExampleOrder(StrEnum):
    """Which dataset examples of a channel: the images that drive it hardest, least, or a fixed random sample
    (is the channel selective at all?)."""

    TOP = "top"
    BOTTOM = "bottom"
    RANDOM = "random"

    @property
    def label(self) -> str:
        return {"top": "most activating", "bottom": "least activating", "random": "random sample"}[self]


class Engine(StrEnum):
    LOCAL = "local"  # in-process: a DataLoader's decode workers and the model here
    RAY = "ray"  # Ray Data: decode tasks and a model actor pool, on a local Ray or a cluster


E = TypeVar("E", bound=StrEnum)


def values(kind: type[StrEnum]) -> tuple[str, ...]:
    """The allowed values of ``kind``, in order: ``values(MapScale) == ("channel", "layer")``."""
    return tuple(member.value for member in kind)


def option(kind: type[E], value: object, what: str) -> E:
    """``value`` as a member of ``kind``, else :class:`InvalidOptionError` saying what is valid. Members
    with a ``label`` are listed with it ("gradcam (Grad-CAM)").

    >>> option(CamMethod, "gradcam", "method").label
    'Grad-CAM'
    """
    try:
        return kind(value)
    except ValueError:
        valid = values(kind)
        titled = "label" in vars(kind)
        listed = ", ".join(f"{m.value} ({m.label})" for m in kind) if titled else ", ".join(valid)
        hint = did_you_mean(str(value), valid) if isinstance(value, str) else ""
        raise InvalidOptionError(f"Unknown {what} {quoted(value)}; use one of: {listed}.{hint}") from None


def grid_options(channels: object, colormap: object, normalise: object) -> tuple[Channels, Colormap, MapScale]:
    """The three options of every feature-map grid (the page's, the webcam's, Compare's), each checked.

    >>> grid_options("top", "auto", "layer")
    (<Channels.TOP: 'top'>, <Colormap.AUTO: 'auto'>, <MapScale.LAYER: 'layer'>)
    """
    return (option(Channels, channels, "channel selection"), option(Colormap, colormap, "colormap"),
            option(MapScale, normalise, "normalisation"))


def whole(value: object, lo: int, hi: int, what: str, extra: str = "") -> int:
    """``value`` as an int when it is a whole number from ``lo`` to ``hi`` (``5.0`` is 5; ``True`` is not
    a number), else :class:`InvalidOptionError`. ``extra`` follows the range in the sentence.

    >>> whole(3.0, 0, 9, "Channel")
    3
    >>> whole(12, 0, 9, "Channel", " (layer1 has 10 channels)")
    Traceback (most recent call last):
    ...
    cnnviz.errors.InvalidOptionError: Channel must be a whole number from 0 to 9 (layer1 has 10 channels), not 12.
    """
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or int(value) != value or not lo <= value <= hi):
        raise InvalidOptionError(f"{what} must be a whole number from {lo} to {hi}{extra}, not {quoted(value)}.")
    return int(value)


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is on: 1, true, yes, on (any case).

    >>> import os; os.environ["CNNVIZ_EXAMPLE_FLAG"] = "Yes"; env_flag("CNNVIZ_EXAMPLE_FLAG")
    True
    """
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def unit_interval(value: object, what: str) -> float:
    """``value`` as a float when it is a number from 0 to 1, else :class:`InvalidOptionError`.

    >>> unit_interval(0.25, "Opacity")
    0.25
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise InvalidOptionError(f"{what} must be a number from 0 to 1, not {quoted(value)}.")
    return float(value)
