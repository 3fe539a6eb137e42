"""Which map to trust: explanation metrics for the maps of one photo and class (deletion / insertion AUCs,
Average Drop, Increase in Confidence), and the sanity check's scores (the trained map against the same
method with random weights)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from .. import budget, preprocess, quality, rollout
from ..attribution import (
    CAM_METHODS,
    class_activation_map,
    class_index,
    guided_gradcam,
    label_of,
    legrad,
    resolve_layer,
    upsampled,
)
from ..errors import InvalidOptionError, quoted
from ..layers import LayerInfo
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome
from .attributions import ATTENTION_METHODS, METHOD_NAMES, AttributionView, attribution, attribution_choices

GUIDED = "guided_gradcam"  # the projection that explains a class: Guided Grad-CAM, |signal| summed over colour as its map
QUALITY_METHODS = (*CAM_METHODS, *ATTENTION_METHODS, GUIDED)
QUALITY_NAMES = {**METHOD_NAMES, GUIDED: "Guided Grad-CAM"}
# methods=None: the CAMs that take one pass and the projection that explains a class; the ones with a pass per
# channel (Score-CAM) only when asked, and within the budget. A vision transformer's: its attention methods.
DEFAULT_QUALITY_METHODS = ("gradcam", "gradcampp", "layercam", GUIDED)
VIT_QUALITY_METHODS = ("rollout", "chefer")


def default_quality_methods(model: str | LoadedModel, weights: str = "pretrained") -> tuple[str, ...]:
    """What :func:`explanation_quality` scores when no method is named: for a vision transformer
    :mod:`cnnviz.rollout` reads, its attention methods (LeGrad too where it applies); else
    :data:`DEFAULT_QUALITY_METHODS`.

    >>> default_quality_methods("timm/vit_tiny_patch16_224", "random")
    ('rollout', 'chefer')
    """
    attention = attribution_choices(model, weights).attention
    return tuple(m for m in ATTENTION_METHODS if m in attention) if attention else DEFAULT_QUALITY_METHODS
QUALITY_STEPS = quality.DEFAULT_STEPS


@dataclass(frozen=True)
class MethodScores:
    """One method's map scored on the photo (:class:`cnnviz.quality.MapScores`, with the method's name)."""

    method: str
    name: str  # "Grad-CAM", "Guided Grad-CAM", ...
    deletion: float  # AUC in [0, 1], lower is better
    insertion: float  # AUC in [0, 1], higher is better
    average_drop: float  # in [0, 1], lower is better
    increase_in_confidence: float  # 1.0 or 0.0 on one photo, higher is better
    fractions: np.ndarray  # float32[S+1]
    deletion_curve: np.ndarray  # float32[S+1]: the class's probability as the map's pixels are removed
    insertion_curve: np.ndarray  # float32[S+1]: … and as they are put back on the baseline
    map: np.ndarray  # float32[h,w]: the map scored (a CAM at its layer's resolution; Guided Grad-CAM at the input's)
    flat: bool  # one value everywhere: no order of the pixels, nothing scored (the values are nan)

    @property
    def difference(self) -> float:
        """Insertion AUC minus deletion AUC, in [−1, 1]: the ranking's key (higher is better)."""
        return self.insertion - self.deletion


@dataclass(frozen=True)
class QualityView:
    """Explanation quality of several maps of one photo for one class."""

    scores: Mapping[str, MethodScores]  # method → its scores, in the order asked (read-only)
    ranking: tuple[str, ...]  # the methods, best first: insertion − deletion, higher first; flat maps last
    class_index: int  # the class explained (every map explains the same one)
    label: str
    probability: float  # the model's probability for it on the photo
    layer: LayerInfo | None  # the CAMs' target layer (Guided Grad-CAM's Grad-CAM too); None: attention methods only
    steps: int  # S: intervals of the curves (2S − 1 perturbed passes per map, and one for Average Drop)
    weights: WeightsOutcome


def _methods(asked: object, loaded: LoadedModel) -> tuple[str, ...]:
    """The methods asked, checked and without repeats; None, an empty list or "": the model's default."""
    if isinstance(asked, str):
        asked = [part.strip() for part in asked.split(",") if part.strip()]
    if asked is None or (isinstance(asked, Sequence) and not asked):
        return default_quality_methods(loaded)
    if not isinstance(asked, Sequence) or isinstance(asked, (bytes, bytearray)):
        raise InvalidOptionError(f"Methods must be a list of method names (from {', '.join(QUALITY_METHODS)}), not {quoted(asked)}.")
    chosen: list[str] = []
    for m in asked:
        if not isinstance(m, str) or m not in QUALITY_METHODS:
            raise InvalidOptionError(f"Unknown method {quoted(m)}: the methods are {', '.join(QUALITY_METHODS)}.")
        if m not in chosen:
            chosen.append(m)
    return tuple(chosen)


def _map_cost(loaded: LoadedModel, info: LayerInfo, method: str) -> budget.Cost:
    """One map's cost, its own refusal first (Score-CAM on a layer with too many channels, a gradient
    method at a layer whose graph does not fit)."""
    if method == GUIDED:
        return budget.check_guided_gradcam(loaded, info)
    if method in ATTENTION_METHODS:
        return budget.check_attention(loaded, rollout.vit_layout(loaded), method)
    batch = budget.check_cam(loaded, info, method)
    return budget.cam_cost(loaded, info, method, batch)


def quality_cost(model: str | LoadedModel, methods_asked: Sequence[str] | None = None, layer: str = "",
                 weights: str = "pretrained", steps: int = QUALITY_STEPS) -> budget.Cost:
    """What :func:`explanation_quality` would take (the photo does not change it), refused as it refuses.

    >>> cost = quality_cost("resnet18", ["gradcam"], weights="random")  # 1 + 40 passes, and the map's
    >>> cost.seconds > 0 and cost.nbytes > 0
    True
    """
    steps = quality.check_steps(steps)
    loaded = load_model(model, weights)
    asked = _methods(methods_asked, loaded)
    info = resolve_layer(loaded, layer or None)
    return _check(loaded, info, asked, steps)


def _check(loaded: LoadedModel, info: LayerInfo, asked: tuple[str, ...], steps: int) -> budget.Cost:
    """The whole request's cost (every map, then the scoring) when it fits; else the sentence says which
    of the methods fit alone."""
    maps = [_map_cost(loaded, info, m) for m in asked]
    batch = quality.quality_batch(loaded, len(asked))

    def total() -> budget.Cost:
        cost = budget.Cost(0, 0.0)
        for one in maps:
            cost = cost.then(one)
        return cost.then(quality.quality_cost(loaded, len(asked), steps, batch))

    cost = total()
    if cost.fits:
        return cost
    alone = [m for m, one in zip(asked, maps, strict=True) if one.then(quality.quality_cost(loaded, 1, steps, batch)).fits]
    fits = f"score fewer methods ({', '.join(QUALITY_NAMES[m] for m in alone)} fit alone)" if alone else \
        "score Grad-CAM alone, use fewer steps, or a smaller model"
    return budget.check(cost, f"Scoring {len(asked)} maps of {loaded.spec.display} at {info.name} with {steps} steps "
                              f"({quality.passes_per_map(loaded.input_size[1] * loaded.input_size[2], steps)} perturbed "
                              "passes per map)", fits)


def explanation_quality(model: str | LoadedModel, image, *, target: str | int | None = None,
                        methods: Sequence[str] | str | None = None, weights: str = "pretrained", layer: str = "",
                        steps: int = QUALITY_STEPS, progress: Callable[[int, int], None] | None = None) -> QualityView:
    """Deletion and insertion AUCs (Petsiuk et al. 2018), Average Drop and Increase in Confidence
    (Chattopadhay et al. 2018) of each method's map of ``image`` for ``target`` (a class index or label;
    None: the model's top class), with the curves, and the methods ranked (definitions:
    :mod:`cnnviz.quality`). ``methods`` None or empty: :func:`default_quality_methods` (Grad-CAM,
    Grad-CAM++, LayerCAM — one pass each — and Guided Grad-CAM; for a vision transformer, attention
    rollout and gradient-weighted rollout, LeGrad too where it applies); the masking methods (a pass per
    channel) only when asked. ``layer``: the CAMs' target layer (empty: the last map before pooling;
    unused by the attention methods). The whole request is checked against the budget before it starts.
    ``progress(stage, stages)`` is called as each stage starts: each method's map, then the scoring of them all.

    Raises:
        InvalidOptionError: an unknown method or class, steps outside 2–200, or a request that would not
            fit one request's budget (the sentence says which methods fit alone).

    >>> view = explanation_quality("resnet18", "examples/coffee.png", methods=["gradcam"], weights="random")
    >>> s = view.scores["gradcam"]
    >>> 0 <= s.deletion <= 1 and 0 <= s.insertion <= 1, view.ranking
    (True, ('gradcam',))
    >>> explanation_quality("timm/vit_tiny_patch16_224", "examples/coffee.png", weights="random").ranking[0] in ("rollout", "chefer")
    True
    """
    steps = quality.check_steps(steps)
    loaded = load_model(model, weights)
    asked = _methods(methods, loaded)
    x = preprocess.model_input(loaded, image).x
    wanted = class_index(loaded, target)
    info = resolve_layer(loaded, layer or None)
    _check(loaded, info, asked, steps)  # before any pass
    maps: dict[str, torch.Tensor] = {}
    chosen = wanted
    stages = len(asked) + 1
    for stage, m in enumerate(asked, 1):
        if progress is not None:
            progress(stage, stages)
        if m == GUIDED:
            signal, cam = guided_gradcam(loaded, x, chosen, info)
            maps[m] = signal.abs().sum(0)
        elif m in ATTENTION_METHODS:
            cam = legrad(loaded, x, chosen) if m == "legrad" else rollout.attention_map(loaded, x, m, chosen)
            maps[m] = cam.map
        else:
            cam = class_activation_map(loaded, x, m, chosen, info, budget.check_cam(loaded, info, m))
            maps[m] = cam.map
        chosen = cam.class_index  # every later map explains the first one's class (the top class when none was named)
    if progress is not None:
        progress(stages, stages)
    scored = quality.score_maps(loaded, x, maps, chosen, steps)
    probability = float(torch.softmax(cam.logits[0], 0)[chosen])
    scores = {m: MethodScores(m, QUALITY_NAMES[m], s.deletion, s.insertion, s.average_drop, s.increase_in_confidence,
                              s.fractions, s.deletion_curve, s.insertion_curve, maps[m].numpy().astype(np.float32), s.flat)
              for m, s in scored.items()}
    ranking = tuple(sorted(asked, key=lambda m: (scores[m].flat, -scores[m].difference if not scores[m].flat else 0.0,
                                                 scores[m].average_drop if not scores[m].flat else 0.0)))
    layered = info if any(m not in ATTENTION_METHODS for m in asked) else None
    return QualityView(MappingProxyType(scores), ranking, chosen, label_of(loaded, chosen), probability, layered, steps,
                       loaded.weights)


ALIKE, PARTLY = 0.8, 0.4  # the sanity check's words: "alike" from 0.8 (Spearman or SSIM), "partly" from 0.4


@dataclass(frozen=True)
class SanityView:
    """The sanity check (Adebayo et al. 2018): one method's map with the page's weights and with random
    weights, for the same class, and how alike they are (on the absolute maps, min-max scaled, at the
    picture's size)."""

    trained: AttributionView  # the map with the page's weights
    random: AttributionView  # the same method, class and layer with random weights
    spearman: float  # rank correlation of the two maps' pixels, in [−1, 1] (nan: a flat map)
    ssim: float  # structural similarity, at most 1 (nan: a flat map)
    flat: bool  # one of the maps has one value everywhere: nothing to compare
    weights: WeightsOutcome  # the page's weights (the random map's are ``random.weights``)

    @property
    def verdict(self) -> str:
        """``"alike"`` (Spearman or SSIM ≥ 0.8: do not trust the map), ``"partly"`` (≥ 0.4), ``"different"``
        (the map depends on what the model learned), or ``"flat"``. The cut-offs are this app's rule of
        thumb: Adebayo et al. report the scores, not a threshold."""
        if self.flat:
            return "flat"
        top = max(self.spearman, self.ssim)
        return "alike" if top >= ALIKE else "partly" if top >= PARTLY else "different"

    @property
    def alike(self) -> bool:
        """Whether the two maps are so alike that the map should not be trusted (:attr:`verdict` ``"alike"``)."""
        return self.verdict == "alike"


def sanity_check(model: str | LoadedModel, image, method: str = "gradcam", target: str | int = "", layer: str = "",
                 weights: str = "pretrained", opacity: float = 0.5) -> SanityView:
    """The map of ``method`` with ``weights`` and with random weights, for the same class (``target``;
    empty: the class the model with ``weights`` puts first), with the Spearman rank correlation and SSIM
    between them (:func:`cnnviz.quality.sanity_scores`). A high value means the map does not depend on
    what the model learned: do not trust it.

    >>> view = sanity_check("timm/tf_efficientnet_lite0", "examples/coffee.png")
    >>> view.random.label, -1 <= view.spearman <= 1
    ('espresso', True)
    """
    trained = attribution(model, image, method, target if target is not None else "", layer, weights, opacity)
    random = attribution(model if isinstance(model, str) else model.spec.name, image, method, str(trained.class_index),
                         trained.layer.name if trained.layer else "", "random", opacity)
    h, w = (load_model(model, weights).input_size[1:]) if isinstance(model, str) else model.input_size[1:]
    a = upsampled(torch.from_numpy(trained.map), h, w).numpy()
    b = upsampled(torch.from_numpy(random.map), h, w).numpy()
    found = quality.sanity_scores(a, b)
    return SanityView(trained, random, found.spearman, found.ssim, found.flat, trained.weights)
