"""Compare: the same view of two models (or weights, or photos) side by side."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import activations, budget, checkpoint, filters, preprocess, render, stages, vocab
from ..activations import Prediction
from ..attribution import class_activation_map, default_layer, label_of  # by name: `cnnviz.attribution` is the view function
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome
from .filters import filter_grid

COMPARE_VIEWS = vocab.values(vocab.CompareKind)
COMPARE_WORDS = {kind.value: kind.label for kind in vocab.CompareKind}
COMPARE_TILES = stages.TILES
STAGE_STRIDES = stages.STRIDES


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
        upload = self.model.startswith(checkpoint.UPLOAD_PREFIX)
        if self.weights.pretrained:
            return f"{self.display} · {'its weights' if upload else 'pretrained'}"
        return f"{self.display} · random weights{', not the checkpoint' if upload else ''}"


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
    model_a: str | LoadedModel, model_b: str | LoadedModel, image, weights_a: str = "pretrained",
    weights_b: str = "random", view: str = "filters", image_b=None,
) -> CompareView:
    """The same view of two models side by side, on the same image (or, with ``image_b``, side B on
    another image: two photos through one model when ``model_b == model_a``).

    ``view``: ``filters`` (each first convolution's filters), ``stages`` (the first convolution and the
    output of each stage, matched by stride: 1/4, 1/8, 1/16, 1/32 of the input, see
    :func:`cnnviz.receptive.list_stages`; the 16 strongest channels of each), or ``cam`` (Grad-CAM at
    each model's default layer; on one photo, when both models have the same classes (ImageNet's 1,000
    in timm's or torchvision's spelling alike), B explains A's top class, so both answer the same
    question; on two photos, each its own). Each side also gets its top-5.
    Both sides' costs together must fit one request's budget (:func:`cnnviz.budget.check_pair`).

    >>> view = compare("resnet18", "timm/resnet18", "examples/coffee.png", "random", "random", "stages")
    >>> [p.title for p in view.pairs][:2], view.pairs[1].caption_a
    (['first convolution', 'stride 4 (1/4 of the input)'], 'layer1 · Sequential · 64×56×56')
    """
    view = vocab.option(vocab.CompareKind, view, "comparison view")
    loaded_a, loaded_b = load_model(model_a, weights_a), load_model(model_b, weights_b)
    input_a = preprocess.model_input(loaded_a, image)
    input_b = preprocess.model_input(loaded_b, image if image_b is None else image_b)
    budget.check_pair(loaded_a, loaded_b, lambda loaded: _cost(loaded, view), view.label)
    if view == "filters":
        pairs = _compare_filters(loaded_a, loaded_b)
        top_a = activations.top5(loaded_a, input_a.x, input_a.digest)
        top_b = activations.top5(loaded_b, input_b.x, input_b.digest)
    elif view == "stages":
        rows_a, top_a = stages.stage_rows(loaded_a, input_a.x, input_a.digest)
        rows_b, top_b = stages.stage_rows(loaded_b, input_b.x, input_b.digest)
        pairs = _pair_rows(rows_a, rows_b)
    else:
        pairs, (top_a, top_b) = _compare_cams(loaded_a, loaded_b, input_a.x, input_b.x, one_photo=image_b is None)
    side_a = CompareSide(loaded_a.spec.key, loaded_a.spec.display, loaded_a.weights, top_a)
    side_b = CompareSide(loaded_b.spec.key, loaded_b.spec.display, loaded_b.weights, top_b)
    return CompareView(str(view), tuple(pairs), side_a, side_b)


def _cost(loaded: LoadedModel, view: str) -> budget.Cost:
    """What one side of a comparison costs: Grad-CAM at its default layer, else one pass (the stages'
    maps, or the top-5 beside the filters)."""
    if view == "cam":
        return budget.cam_cost(loaded, default_layer(loaded), "gradcam")
    return budget.forward_cost(loaded)


def _compare_filters(loaded_a: LoadedModel, loaded_b: LoadedModel) -> list[ComparePair]:
    def side(loaded: LoadedModel) -> tuple[np.ndarray, str]:
        if not filters.convolutions(loaded):
            return render.empty_grid(), f"{loaded.spec.display} has no convolution"
        found = filter_grid(loaded)
        w = found.filters.weight
        return found.image, f"{found.conv.name} · {w.shape[0]} filters {w.shape[-2]}×{w.shape[-1]}, {found.drawn}"

    (a, caption_a), (b, caption_b) = side(loaded_a), side(loaded_b)
    return [ComparePair("first convolution", a, b, caption_a, caption_b)]


def _pair_rows(rows_a: dict[str, stages.StageRow], rows_b: dict[str, stages.StageRow]) -> list[ComparePair]:
    pairs = []
    for title in stages.titles():
        if title not in rows_a and title not in rows_b:
            continue
        a, b = rows_a.get(title), rows_b.get(title)
        pairs.append(ComparePair(title, a.grid if a else render.empty_grid(), b.grid if b else render.empty_grid(),
                                 a.caption if a else "no map at this stride", b.caption if b else "no map at this stride"))
    return pairs


IMAGENET_CLASSES = 1000
SPELLINGS_APART = 10  # of ImageNet's 1,000 labels, timm's and torchvision's spell 2 differently (crane / crane bird)


def same_classes(a, b) -> bool:
    """Whether two heads' label lists name the same classes index by index: the same lists, or two
    spellings of ImageNet-1k's 1,000 classes (lists that agree on all but a few of their labels).

    >>> imagenet = [f"class {i}" for i in range(1000)]
    >>> same_classes(imagenet, ["crane bird", *imagenet[1:]]), same_classes(imagenet, imagenet[::-1]), same_classes(None, None)
    (True, False, False)
    """
    if a is None or b is None or len(a) != len(b):
        return False
    apart = sum(x != y for x, y in zip(a, b))
    return apart == 0 or (len(a) == IMAGENET_CLASSES and apart <= SPELLINGS_APART)


def _compare_cams(loaded_a: LoadedModel, loaded_b: LoadedModel, x_a: torch.Tensor, x_b: torch.Tensor, one_photo: bool):
    """Each side's Grad-CAM; on one photo with the same classes on both sides (:func:`same_classes`), B
    explains A's top class (one question, two models); on two photos each side explains its own top class."""
    found_a = class_activation_map(loaded_a, x_a, "gradcam")
    same_question = one_photo and same_classes(loaded_a.categories, loaded_b.categories)
    found_b = class_activation_map(loaded_b, x_b, "gradcam", found_a.class_index if same_question else None)
    pictures, tops = [], []
    for loaded, x, found in ((loaded_a, x_a, found_a), (loaded_b, x_b, found_b)):
        raw = found.map.numpy().astype(np.float32)
        pictures.append(render.cam_picture(preprocess.seen_image(loaded, x), raw, 0.5))
        caption = (f"Grad-CAM for {label_of(loaded, found.class_index)} (class {found.class_index}, "
                   f"probability {found.probability:.1%}) at {found.layer.name}")
        tops.append((caption, tuple(activations.top_k(found.logits, loaded.categories))))
    pair = ComparePair("Grad-CAM", pictures[0], pictures[1], tops[0][0], tops[1][0])
    return [pair], (tops[0][1], tops[1][1])
