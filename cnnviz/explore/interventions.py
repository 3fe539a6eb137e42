"""Interventions: change a layer's channels and see what the rest of the network makes of it; and which
channels of a layer matter for a class (each zeroed in turn)."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .. import budget, cancel, layers, preprocess, render, vocab
from ..activations import Prediction, top_k
from ..attribution import class_index, label_of, resolve_layer  # (the package's `attribution` is the view function)
from ..intervene import MAX_FACTOR, check_factor, fast_path_ok
from ..intervene import channel_importance as importance_passes
from ..intervene import intervene as intervention_passes
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome

INTERVENTIONS = vocab.values(vocab.Intervention)
MAX_SCALE = MAX_FACTOR  # the largest scale factor
LATER_TILES = 16  # channels of the later layer drawn before/after: its strongest on the photo as the model saw it


@dataclass(frozen=True)
class ClassChange:
    """One class's score before and after an intervention."""

    index: int
    label: str
    logit_before: float
    logit_after: float
    probability_before: float
    probability_after: float


@dataclass(frozen=True)
class InterventionView:
    """What changing some channels of a layer did: the class scores and a later layer's maps, before and after."""

    logits_before: np.ndarray  # float32[N] over the model's classes
    logits_after: np.ndarray  # float32[N]
    top5_before: tuple[Prediction, ...]  # empty for a model without labels
    top5_after: tuple[Prediction, ...]
    changes: tuple[ClassChange, ...]  # the classes in either top-5 (or the top 5 indices), by probability before
    layer: layers.LayerInfo
    channels: tuple[int, ...]  # the channels changed
    mode: str  # zero, mean, scale, keep
    factor: float  # scale only
    later: layers.LayerInfo  # the layer whose maps are drawn before and after
    later_channels: tuple[int, ...]  # the later layer's channels drawn (its strongest before the change)
    maps_before: np.ndarray | None  # uint8[H,W,3] grid of those channels as the model made them
    maps_after: np.ndarray | None  # uint8[H,W,3] the same channels after the change, on the same scale
    later_changed: bool  # whether the later layer comes after the layer (else the change cannot reach it)
    weights: WeightsOutcome

    def describe(self) -> str:
        """The intervention in words: ``"channels 3, 7 of layer4 set to zero"``."""
        what = vocab.Intervention(self.mode).label if self.mode != "scale" else f"scaled ×{self.factor:g}"
        listed = ", ".join(map(str, self.channels[:12])) + (f" … ({len(self.channels)} channels)" if len(self.channels) > 12 else "")
        return f"channel{'s' if len(self.channels) != 1 else ''} {listed} of {self.layer.name} {what}"


def _predictions(loaded: LoadedModel, logits: torch.Tensor) -> tuple[Prediction, ...]:
    return tuple(top_k(logits[None], loaded.categories, 5))


def _changes(loaded: LoadedModel, before: torch.Tensor, after: torch.Tensor) -> tuple[ClassChange, ...]:
    p_before, p_after = torch.softmax(before, 0), torch.softmax(after, 0)
    k = min(5, before.numel())
    wanted = dict.fromkeys(before.topk(k).indices.tolist() + after.topk(k).indices.tolist())
    rows = [ClassChange(i, label_of(loaded, i), float(before[i]), float(after[i]), float(p_before[i]), float(p_after[i]))
            for i in wanted]
    return tuple(sorted(rows, key=lambda r: -r.probability_before))


def _grids(before: torch.Tensor, after: torch.Tensor) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """The strongest :data:`LATER_TILES` channels of ``before`` (``Tensor[C,H,W]``), drawn before and after on
    one scale (the range of both), so brighter means larger in either picture."""
    means = before.reshape(before.shape[0], -1).mean(1)
    chosen = sorted(means.topk(min(LATER_TILES, before.shape[0])).indices.tolist())
    lo = float(min(before.min(), after.min()))
    hi = float(max(before.max(), after.max()))
    drawn = [render.draw_feature_grid(maps.numpy(), chosen, "auto", "layer", (lo, hi))[0] for maps in (before, after)]
    return tuple(chosen), drawn[0], drawn[1]


def intervene(
    model: str | LoadedModel, image, layer: str, channels: int | str | list[int], *, mode: str = "zero",
    factor: float = 1.0, weights: str = "pretrained", later_layer: str = "",
) -> InterventionView:
    """Change ``channels`` of ``layer`` for ``image`` and run the rest of the network from there: the class
    scores before and after, and the maps of ``later_layer`` (empty: the last map before the network pools
    it) before and after.

    ``mode``: ``zero`` (ablate), ``mean`` (each channel set to its mean on this photo), ``scale`` (times
    ``factor``, 0 to 3) or ``keep`` (only these channels, every other one zeroed). ``channels``: an index,
    a list, text such as ``"3, 7, 12"``, or ``"top-N"`` (the N channels with the highest mean on this photo).

    Raises:
        InvalidOptionError: an unknown mode, a factor outside 0–3, channels the layer does not have.
        UnknownLayerError: no listed layer of that name (the sentence suggests close names).

    >>> view = intervene("resnet18", "examples/coffee.png", "layer4", "top-3", mode="keep", weights="random")
    >>> view.logits_after.shape, len(view.channels), view.later.name
    ((1000,), 3, 'layer4')
    """
    mode = vocab.option(vocab.Intervention, mode, "intervention")
    factor = check_factor(factor)
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer or None)
    later = resolve_layer(loaded, later_layer or None)
    budget.check(budget.forward_cost(loaded).repeated(2), f"An intervention on {loaded.spec.display} runs two passes",
                 "use a smaller model")
    x = preprocess.model_input(loaded, image).x
    found = intervention_passes(loaded, x, info, channels, mode, factor, later)
    before, after = found.logits_before, found.logits_after
    chosen, grid_before, grid_after = ((), None, None)
    if found.later_before is not None and found.later_after is not None:
        chosen, grid_before, grid_after = _grids(found.later_before, found.later_after)
    return InterventionView(before.numpy().astype(np.float32), after.numpy().astype(np.float32), _predictions(loaded, before),
                            _predictions(loaded, after), _changes(loaded, before, after), info, found.channels, str(mode),
                            found.factor, later, chosen, grid_before, grid_after, found.later_is_after, loaded.weights)


@dataclass(frozen=True)
class ChannelImportanceView:
    """Each channel of a layer zeroed in turn, and how far the class's score (logit) dropped."""

    drops: np.ndarray  # float32[C]: the class's logit as the model made it minus with channel c zeroed (> 0: it helped)
    ranking: np.ndarray  # int64[C]: the channels by drop, largest first
    class_index: int  # the class scored
    label: str
    logit: float  # its logit as the model made it
    probability: float  # its probability
    top_label: str  # the model's own top class
    layer: layers.LayerInfo
    batch: int  # ablated copies per pass
    passes: int  # forward passes made
    fast: bool  # whether the network before the layer ran once per pass (see cnnviz.intervene.channel_importance)
    weights: WeightsOutcome


def channel_importance(
    model: str | LoadedModel, image, layer: str, *, target: str | int | None = None, weights: str = "pretrained",
    progress: Callable[[int, int], None] | None = None,
) -> ChannelImportanceView:
    """Zero each channel of ``layer`` in turn (many per pass) and rank the channels by how far the score
    (logit) of ``target`` drops: a class index or label; None or empty: the model's top class.
    ``progress(done, total)`` is called as each forward pass starts (``total``: the passes expected).

    Raises:
        InvalidOptionError: an unknown class, or a layer whose channels would not fit one request's budget
            (:mod:`cnnviz.budget`: the sentence says how many would).
        UnknownLayerError: no listed layer of that name.

    >>> view = channel_importance("resnet18", "examples/coffee.png", "layer1.0.conv1", weights="random")
    >>> view.drops.shape, int(view.ranking[0]) == int(view.drops.argmax())
    ((64,), True)
    """
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer or None)
    wanted = class_index(loaded, target)
    batch = budget.check_importance(loaded, info)  # before any pass: refuses what would not fit, sizes the batches
    x = preprocess.model_input(loaded, image).x
    counted = nullcontext() if progress is None else cancel.count_passes(_passes_expected(loaded, info, batch), progress)
    with counted:
        found = importance_passes(loaded, x, info, wanted, batch)
    drops = found.drops.numpy().astype(np.float32)
    ranking = np.argsort(-drops, kind="stable")
    logit = float(found.logits_before[found.class_index])
    probability = float(torch.softmax(found.logits_before, 0)[found.class_index])
    return ChannelImportanceView(drops, ranking, found.class_index, label_of(loaded, found.class_index), logit,
                                 probability, label_of(loaded, found.top_class), info, found.batch, found.passes,
                                 found.fast, loaded.weights)


def _passes_expected(loaded: LoadedModel, info: layers.LayerInfo, batch: int) -> int:
    """The passes :func:`cnnviz.intervene.channel_importance` makes: one as is, one per ``batch`` channels,
    and, the first time for this model and layer, one whole copy that checks the batched tail (when the
    check fails, the first batch runs again as whole copies: one more)."""
    return 1 + -(-info.shape[0] // batch) + (fast_path_ok(loaded, info) is None)

