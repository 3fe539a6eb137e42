"""How far to trust an explanation: deletion / insertion AUCs (Petsiuk et al. 2018), Average Drop and
Increase in Confidence (Chattopadhay et al. 2018) of a saliency map, and the sanity-check scores
between a trained and a random-weights map (Adebayo et al. 2018: Spearman rank correlation and SSIM).

The definitions are torchcam 0.5.0's (``torchcam.metrics``), reproduced exactly (the tests check the
numbers against torchcam's own metric):

* the map is resized to the input with bilinear interpolation (``align_corners=False``) and its
  pixels ranked from the highest value to the lowest (a stable sort: ties keep raster order);
* ``steps`` = S intervals of ``ceil(H·W / S)`` pixels: at each fraction, **deletion** replaces the
  highest-ranked pixels (every colour plane) with the baseline, **insertion** starts from the baseline
  and puts them back; the baseline is zeros of the model's input, i.e. the normalisation's mean colour;
* the curve is the softmax probability of the class explained; the AUC is the trapezoid rule over the
  perturbed fraction (so both lie in [0, 1]): a low deletion AUC and a high insertion AUC mean the
  pixels the map ranks first are the ones the decision rests on;
* **Average Drop** ``max(0, p − p_masked) / p`` and **Increase in Confidence** ``p_masked > p``, where
  the masked input is the input times the map min-max scaled to [0, 1] (torchcam's normalised CAM)
  and resized to the input.

What is written here rather than called from torchcam, and why: torchcam's metrics take a CAM
*extractor*, compute the map themselves, keep only the averaged AUCs and score each metric with its
own unperturbed pass. Here the map is given (any map: a CAM, or Guided Grad-CAM's projection, which
is no torchcam extractor), the curves are kept (the page plots them), one unperturbed pass serves
every map and both metric families, the perturbed inputs of all the maps share batches sized by the
memory budget, and every pass holds the model's lock under the stop check. The ~30 lines that build
the perturbed inputs follow ``DeletionInsertionMetric._compute_curves`` job for job.

The sanity-check scores use ``scipy.stats.spearmanr`` and ``skimage.metrics.structural_similarity``
on the absolute maps, min-max scaled to [0, 1] (as Adebayo et al. compare them).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from . import budget
from .errors import CnnvizError, InvalidOptionError, quoted
from .hooks import eval_mode, interruptible

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .loading import LoadedModel

DEFAULT_STEPS = 20  # torchcam's DeletionInsertionMetric default: S intervals, 2S − 1 perturbed passes
MAX_STEPS = 200  # more intervals than this changes the AUC by less than the model's float noise
QUALITY_BATCH = 40  # perturbed inputs per forward pass, at most (the budget may choose fewer): 2S − 1 + 1 at S = 20
PERTURB_COPIES = 3.0  # per perturbed input in a batch, beside the pass itself: the input, its copy, the where's operands


@dataclass(frozen=True)
class MapScores:
    """How one map scores on one input for one class (see the module's docstring for the definitions)."""

    deletion: float  # AUC of the deletion curve, in [0, 1]: lower is better (nan for a flat map)
    insertion: float  # AUC of the insertion curve, in [0, 1]: higher is better (nan for a flat map)
    average_drop: float  # max(0, p − p_masked) / p, in [0, 1]: lower is better (nan for a flat map)
    increase_in_confidence: float  # 1.0 when the masked input raises the probability, else 0.0 (nan for a flat map)
    masked_probability: float  # p_masked: the probability for the input times the [0, 1] map
    fractions: np.ndarray  # float32[S+1]: the fraction of pixels removed (deletion) or put back (insertion)
    deletion_curve: np.ndarray  # float32[S+1]: the class's probability at each fraction, pixels removed
    insertion_curve: np.ndarray  # float32[S+1]: the class's probability at each fraction, pixels put back
    flat: bool = False  # the map has one value everywhere: it ranks no pixel above another, so nothing was scored


def perturbed_counts(positions: int, steps: int = DEFAULT_STEPS) -> list[int]:
    """How many pixels are perturbed at each point of the curves (torchcam's steps): 0, k, 2k, … and
    ``positions``, with ``k = ceil(positions / steps)``.

    >>> perturbed_counts(49, 20)
    [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 49]
    >>> len(perturbed_counts(224 * 224, 20))  # 21 points: 2 × 19 interior passes + the all-baseline one = 2S − 1
    21
    """
    step = -(-positions // steps)
    return [*range(0, positions, step), positions]


def passes_per_map(positions: int, steps: int = DEFAULT_STEPS) -> int:
    """Perturbed inputs one map needs: two per interior point of the curves, the all-baseline input
    (deletion's last point and insertion's first) and the masked input of Average Drop.

    >>> passes_per_map(224 * 224, 20)  # 2S − 1 = 39, and one for Average Drop
    40
    """
    return 2 * (len(perturbed_counts(positions, steps)) - 2) + 1 + 1


def check_steps(steps: object) -> int:
    """``steps`` as a whole number from 2 to :data:`MAX_STEPS`, else the sentence."""
    from .vocab import whole

    return whole(steps, 2, MAX_STEPS, "Steps", " (intervals of the deletion and insertion curves; torchcam's default is 20)")


def quality_cost(loaded: LoadedModel, maps: int, steps: int = DEFAULT_STEPS, batch: int = QUALITY_BATCH) -> budget.Cost:
    """Scoring ``maps`` maps (:func:`score_maps`): one unperturbed pass, then every map's perturbed inputs
    (:func:`passes_per_map`) ``batch`` at a time, each like a pass of batch 1 (``budget.COPY_TIME_FACTOR``).
    The bytes: a batch's passes and inputs, and each map's ranks and scaled map at the input's size."""
    forward = budget.forward_cost(loaded)
    _c, h, w = loaded.input_size
    copies = maps * passes_per_map(h * w, steps)
    per_map = 12 * h * w  # int64 ranks + the float32 [0, 1] map
    nbytes = int(batch * (forward.nbytes + PERTURB_COPIES * budget.input_bytes(loaded)) + maps * per_map)
    return budget.Cost(nbytes, (1 + budget.COPY_TIME_FACTOR * copies) * forward.seconds)


def quality_batch(loaded: LoadedModel, maps: int = 1) -> int:
    """Perturbed inputs per pass within :data:`cnnviz.budget.REQUEST_BYTES`: :data:`QUALITY_BATCH` when it
    fits, fewer when not, at least 1 (the scores do not depend on it)."""
    per_copy = budget.forward_cost(loaded).nbytes + PERTURB_COPIES * budget.input_bytes(loaded)
    _c, h, w = loaded.input_size
    room = budget.REQUEST_BYTES - maps * 12 * h * w
    return max(1, min(QUALITY_BATCH, int(room // per_copy)))


def _check_map(saliency: object, name: str) -> torch.Tensor:
    if isinstance(saliency, np.ndarray):
        saliency = torch.from_numpy(np.ascontiguousarray(saliency))
    if not isinstance(saliency, torch.Tensor) or saliency.ndim != 2 or min(saliency.shape) < 1:
        shape = tuple(saliency.shape) if hasattr(saliency, "shape") else type(saliency).__name__
        raise InvalidOptionError(f"The map {quoted(name)} must be a 2-D array (height × width), not {quoted(shape)}.")
    saliency = saliency.detach().float().cpu()
    if not torch.isfinite(saliency).all():
        raise InvalidOptionError(f"The map {quoted(name)} has values that are not finite numbers (nan or infinity).")
    return saliency


def _probabilities(loaded: LoadedModel, batch: torch.Tensor, class_index: int) -> torch.Tensor:
    """The softmax probability of ``class_index`` for each input of ``batch``: one pass without
    gradients, eval mode, the model's lock held, under the stop check."""
    model = loaded.model
    with loaded.lock, eval_mode(model), interruptible(model), torch.no_grad():
        scores = model(batch.to(loaded.device))
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise CnnvizError(f"{loaded.spec.display} does not output class scores, so there is no class probability to measure.")
    if not 0 <= class_index < scores.shape[1]:
        raise InvalidOptionError(f"Class index {class_index} is out of range: {loaded.spec.display} has classes 0 to {scores.shape[1] - 1}.")
    return torch.softmax(scores.float(), dim=1)[:, class_index].cpu()


def score_maps(
    loaded: LoadedModel, x: torch.Tensor, maps: Mapping[str, object], class_index: int,
    steps: int = DEFAULT_STEPS, batch: int | None = None,
) -> dict[str, MapScores]:
    """Deletion and insertion AUCs (with their curves), Average Drop and Increase in Confidence of each
    map in ``maps`` (name → ``Tensor[h,w]`` or ``float32[h,w]``, any resolution: resized to the input) for
    ``x`` (``Tensor[1,3,H,W]``, the model's input) and ``class_index``. One unperturbed pass, then every
    map's :func:`passes_per_map` perturbed inputs, ``batch`` per pass (None: :func:`quality_batch`).

    Raises:
        InvalidOptionError: a map that is not 2-D or not finite, steps outside 2–:data:`MAX_STEPS`, a class
            index the model does not have.

    >>> from cnnviz.loading import load_model
    >>> loaded = load_model("resnet18", "random")
    >>> x = torch.rand(1, 3, 64, 64)
    >>> found = score_maps(loaded, x, {"centre": torch.ones(4, 4).index_fill_(0, torch.tensor([1, 2]), 2.0)}, 3, steps=4)
    >>> found["centre"].fractions.tolist(), 0 <= found["centre"].deletion <= 1
    ([0.0, 0.25, 0.5, 0.75, 1.0], True)
    """
    steps = check_steps(steps)
    if isinstance(class_index, bool) or not isinstance(class_index, int):
        raise InvalidOptionError(f"The class must be a class index (a whole number), not {quoted(class_index)}.")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1:
        raise InvalidOptionError("The input must be one image as the model takes it: a tensor of shape 1 × channels × height × width.")
    x = x.detach().to(loaded.device).float()
    if x.is_inference():
        x = x.clone()
    _n, _c, h, w = x.shape
    positions = h * w
    counts = perturbed_counts(positions, steps)
    fractions = np.asarray(counts, dtype=np.float64) / positions
    checked = {name: _check_map(m, name) for name, m in maps.items()}
    batch = quality_batch(loaded, max(1, len(checked))) if batch is None else check_batch(batch)

    # Per map: the ranks of its pixels (0 = the highest value) and its [0, 1] version at the input's size.
    ranks: dict[str, torch.Tensor] = {}
    scaled: dict[str, torch.Tensor] = {}
    flat = {name for name, m in checked.items() if float(m.max() - m.min()) == 0.0}
    for name, m in checked.items():
        if name in flat:
            continue
        resized = F.interpolate(m[None, None], (h, w), mode="bilinear", align_corners=False)[0, 0]
        order = torch.argsort(resized.flatten(), descending=True, stable=True)
        ranks[name] = torch.argsort(order).to(loaded.device)
        low = m - m.min()  # torchcam's normalised CAM: min-max at the map's own resolution, then resized
        unit = low / (low.max() + 1e-8)
        scaled[name] = F.interpolate(unit[None, None], (h, w), mode="bilinear", align_corners=False)[0, 0].to(loaded.device)

    # Jobs (map, kind, point, count), as torchcam orders them: the all-baseline input first, then each
    # interior point's deletion and insertion; then the masked input of Average Drop.
    jobs = []
    for name in ranks:
        jobs.append((name, "baseline", len(counts) - 1, positions))
        jobs += [(name, kind, point, count) for point, count in enumerate(counts[1:-1], 1) for kind in ("deletion", "insertion")]
        jobs.append((name, "masked", 0, 0))
    original = float(_probabilities(loaded, x, class_index)[0])
    curves = {name: (np.full(len(counts), np.nan), np.full(len(counts), np.nan)) for name in ranks}
    masked: dict[str, float] = {}
    flat_x = x.flatten(2)  # [1, C, H·W]
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        inputs = []
        for name, kind, _point, count in chunk:
            if kind == "masked":
                inputs.append(x[0] * scaled[name])
                continue
            relevant = ranks[name] < count  # the first `count` pixels in the map's order
            keep = relevant if kind == "insertion" else ~relevant  # the baseline job keeps none
            inputs.append(torch.where(keep, flat_x[0], torch.zeros((), device=x.device)).reshape(x.shape[1:]))
        found = _probabilities(loaded, torch.stack(inputs), class_index)
        for (name, kind, point, _count), p in zip(chunk, found.tolist(), strict=True):
            deletion, insertion = curves[name]
            if kind == "masked":
                masked[name] = p
            elif kind == "deletion":
                deletion[point] = p
            elif kind == "insertion":
                insertion[point] = p
            else:
                deletion[point] = p
                insertion[0] = p
    result: dict[str, MapScores] = {}
    nan_curve = np.full(len(counts), np.nan, dtype=np.float32)
    for name in checked:
        if name in flat:
            result[name] = MapScores(math.nan, math.nan, math.nan, math.nan, math.nan, fractions.astype(np.float32),
                                     nan_curve.copy(), nan_curve.copy(), flat=True)
            continue
        deletion, insertion = curves[name]
        deletion[0], insertion[-1] = original, original
        drop = max(0.0, original - masked[name]) / (original + 1e-7)
        result[name] = MapScores(
            float(np.trapezoid(deletion, fractions)), float(np.trapezoid(insertion, fractions)), drop,
            float(masked[name] > original), masked[name], fractions.astype(np.float32),
            deletion.astype(np.float32), insertion.astype(np.float32),
        )
    return result


def check_batch(batch: object) -> int:
    """``batch`` as a whole number of at least 1, else the sentence."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidOptionError(f"The batch must be a whole number of at least 1, not {quoted(batch)}.")
    return batch


@dataclass(frozen=True)
class SanityScores:
    """How alike a trained map and its random-weights counterpart are (Adebayo et al. 2018), on the absolute
    maps min-max scaled to [0, 1]: 1 means the same ranking / the same structure. A high value means the map
    does not depend on what the model learned."""

    spearman: float  # Spearman rank correlation of the pixels, in [−1, 1] (nan when a map is flat)
    ssim: float  # structural similarity, at most 1 (nan when a map is flat)
    flat: bool = False  # one of the maps has one value everywhere: there is nothing to rank


def normalised_abs(saliency: np.ndarray) -> np.ndarray:
    """``|saliency|`` min-max scaled to [0, 1] (all zeros for a flat map), float64.

    >>> normalised_abs(np.array([[-2.0, 1.0], [0.0, 2.0]])).tolist()
    [[1.0, 0.5], [0.0, 1.0]]
    """
    a = np.abs(np.asarray(saliency, dtype=np.float64))
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def sanity_scores(trained: np.ndarray, random: np.ndarray) -> SanityScores:
    """Spearman rank correlation (``scipy.stats.spearmanr``) and SSIM (``skimage.metrics.structural_similarity``,
    data range 1, a 7-pixel window or the largest odd one the maps allow) between two maps of one shape.

    Raises:
        InvalidOptionError: maps of different shapes, not 2-D, smaller than 3 × 3, or not finite.

    >>> m = np.arange(64.0).reshape(8, 8)
    >>> s = sanity_scores(m, m)
    >>> round(s.spearman, 6), round(s.ssim, 6)
    (1.0, 1.0)
    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(trained, dtype=np.float64), np.asarray(random, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InvalidOptionError(f"The two maps must be 2-D and of one shape, not {quoted(a.shape)} and {quoted(b.shape)}.")
    if min(a.shape) < 3:
        raise InvalidOptionError(f"The maps must be at least 3 × 3 to compare their structure, not {a.shape[0]} × {a.shape[1]}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InvalidOptionError("The maps have values that are not finite numbers (nan or infinity).")
    a, b = normalised_abs(a), normalised_abs(b)
    if a.max() == 0 or b.max() == 0:  # one value everywhere: no ranking, no structure to compare
        return SanityScores(math.nan, math.nan, flat=True)
    window = min(7, min(a.shape) - (1 - min(a.shape) % 2))  # odd, at most the smaller side
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    return SanityScores(rho, float(structural_similarity(a, b, data_range=1.0, win_size=window)))
