"""What one request may cost: its byte and second budgets, the cost model that sizes a request before
it runs, and the checks that refuse (or scale down) what would not fit.

A public link gets requests from people the operator never meets, so every heavy request is sized
before it runs (bytes it will allocate, seconds it will take, from the model's measured forward time)
and checked against these budgets; over budget it is scaled down or refused with a sentence that says
what would fit. Every request also runs under a deadline (:data:`REQUEST_SECONDS`): past it, the next
module boundary stops it.

The cost model, per loaded model, from two things known before any heavy work:

* the **traced maps** (:func:`cnnviz.layers.list_layers`: every map's shape from the listing pass);
* one **timed forward pass** (no gradients, batch 1, the model's own input size), with the moment each
  listed layer's output was made, kept with the model (:func:`forward_profile`, :func:`retime`).

From those: a pass without gradients peaks at a few times the largest map (only a few maps are alive
at once); a pass that keeps its graph for a backward pass holds about every map it makes; a backward
pass to the input or to a layer (no weight gradients: nothing here trains) takes about as long as the
forward pass it goes back through; convolutions cost in proportion to the pixels. The constants below
say what they were measured on (``python bench/budget.py`` prints the estimates beside measurements).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import vocab
from .attribution import CAM_NAMES, CAM_SAMPLES, LEGRAD_BLOCKS, MASKING_METHODS, SCORECAM_BATCH, default_layer, graph_from_layer
from .errors import InvalidOptionError
from .hooks import forward_hooks, interruptible
from .intervene import IMPORTANCE_BATCH, fast_path_ok
from .layers import LayerInfo, list_layers
from .loading import model_nbytes
from .rollout import VitLayout, attention_bytes

if TYPE_CHECKING:
    from .loading import LoadedModel

REQUEST_BYTES = int(float(os.environ.get("CNNVIZ_REQUEST_MB", "3072")) * 2**20)  # one request's allocations at most
REQUEST_SECONDS = float(os.environ.get("CNNVIZ_REQUEST_S", "120"))  # one request's deadline, queue wait included

# --- the cost model's constants -------------------------------------------------------------------
# Measured with bench/budget.py (peak RSS of a fresh process whose allocator hands every block over
# 128 KB back to the system when freed; CPU, 2 threads, random weights) on ResNet-18, EfficientNet-B0,
# EfficientNet-B3 at 300 px, EfficientNet-B7 at 600 px, ConvNeXt-T and ViT-B/16. The byte factors sit
# a little above the largest ratio seen (the budget trusts them); the time factors near the usual one
# (an estimate too high refuses work that fits, and the deadline stops a rare overrun).
FORWARD_PEAK_FACTOR = 4.0  # peak of a pass without gradients / its largest map: 2.2–3.5 measured
GRAPH_FACTOR = 1.6  # bytes a pass keeps for its backward pass / the sum of the maps it makes: 1.0–1.5 measured
BACKWARD_TIME_FACTOR = 1.5  # a backward pass to the input or a layer / the forward pass it goes back through: 0.9–1.4
COPY_TIME_FACTOR = 1.0  # one masked copy in a Score-CAM batch / a pass of batch 1: 0.66–1.21 measured (batches of 8)
MASK_COPIES = 4 / 3  # Score-CAM: per masked copy, the copy (3 planes) and its upsampled mask (1 plane), in inputs
PROFILE_PASSES = 2  # timed passes per model, the faster kept: the first may carry one-off costs or a neighbour's burst
RETIME_AFTER_S = 10.0  # a refusal on time times the model again if its profile is older than this (see retime)


@dataclass(frozen=True)
class Cost:
    """What a request will take: ``nbytes``, the peak it allocates beyond what is already resident (the
    model's parameters, the caches), and ``seconds`` of work on this machine.

    >>> Cost(2**30, 3.0).then(Cost(2**29, 4.0))
    Cost(nbytes=1073741824, seconds=7.0)
    """

    nbytes: int
    seconds: float

    def then(self, other: Cost) -> Cost:
        """This work, then ``other``: the seconds add up; the bytes do not (the first has freed its
        memory before the second starts), so the peak is the larger one."""
        return Cost(max(self.nbytes, other.nbytes), self.seconds + other.seconds)

    def repeated(self, n: int) -> Cost:
        """``n`` runs one after another: ``n`` times the seconds, the same peak."""
        return Cost(self.nbytes, self.seconds * n)

    @property
    def fits(self) -> bool:
        """Whether it is within both budgets (:data:`REQUEST_BYTES`, :data:`REQUEST_SECONDS`)."""
        return self.nbytes <= REQUEST_BYTES and self.seconds <= REQUEST_SECONDS


# --- what the model tells us: its maps and its measured forward pass -------------------------------


@dataclass(frozen=True)
class ForwardProfile:
    """One timed forward pass of a model: its seconds, and when each listed layer's output was made."""

    seconds: float  # the whole pass (batch 1, no gradients, the model's own input size)
    reached: dict[str, float]  # layer name -> seconds into the pass when its (first) output was made


class _Timing:
    """A model's forward profile and when it was taken (a slow one may give way to a faster retake)."""

    def __init__(self, profile: ForwardProfile) -> None:
        self.profile = profile
        self.taken = time.monotonic()


_TIMING_LOCK = threading.Lock()


def _time_passes(loaded: LoadedModel) -> ForwardProfile:
    """The faster of :data:`PROFILE_PASSES` timed passes: zeros of the model's input size, no
    gradients, under its lock (and the stop check), a timestamp at each listed layer's output."""
    names = [info.name for info in list_layers(loaded)]

    def timed_pass() -> ForwardProfile:
        reached: dict[str, float] = {}
        x = torch.zeros((1, *loaded.input_size), device=loaded.device)
        start = time.perf_counter()
        with forward_hooks(loaded.model, names, lambda name, _i, _o: reached.setdefault(name, time.perf_counter() - start)), \
                interruptible(loaded.model), torch.no_grad():
            loaded.model(x)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
        return ForwardProfile(time.perf_counter() - start, reached)

    with loaded.lock:
        return min((timed_pass() for _ in range(PROFILE_PASSES)), key=lambda profile: profile.seconds)


def _timing(loaded: LoadedModel) -> _Timing:
    return loaded.memo("budget.forward", lambda: _Timing(_time_passes(loaded)))


def forward_profile(loaded: LoadedModel) -> ForwardProfile:
    """The model's forward pass, timed on first use and kept with the model (:meth:`LoadedModel.memo`);
    see :func:`retime` for when it is timed again.

    >>> from cnnviz.loading import load_model
    >>> found = forward_profile(load_model("resnet18", "random"))
    >>> found.seconds > found.reached["layer1"] > 0
    True
    """
    return _timing(loaded).profile


def retime(loaded: LoadedModel) -> bool:
    """Time the model again, keeping the faster profile, when its profile is older than
    :data:`RETIME_AFTER_S`; whether it did. A profile taken while a neighbour's request held the
    cores is too slow, and every time estimate made from it too: a refusal on time calls this first,
    at most once per :data:`RETIME_AFTER_S` per model, so refusals stay cheap."""
    timing = _timing(loaded)
    with _TIMING_LOCK:
        if time.monotonic() - timing.taken < RETIME_AFTER_S:
            return False
        timing.taken = time.monotonic()
    fresh = _time_passes(loaded)
    with _TIMING_LOCK:
        if fresh.seconds < timing.profile.seconds:
            timing.profile = fresh
    return True


@dataclass(frozen=True)
class _Maps:
    """The listed layers' positions and the running sum of the maps a pass makes, in forward order."""

    index: dict[str, int]  # layer name -> its position in the listing
    end: dict[str, int]  # layer name -> the position after the last layer inside it (its output is made then)
    made: list[int]  # made[i]: bytes of the leaf maps at positions < i (leaves: no listed layer inside)
    largest: int  # bytes of the largest map


def _maps(loaded: LoadedModel) -> _Maps:
    """:class:`_Maps` of the model, computed once (kept with the model)."""

    def compute() -> _Maps:
        found = list_layers(loaded)
        inside = [i + 1 < len(found) and found[i + 1].name.startswith(info.name + ".") for i, info in enumerate(found)]
        made = [0]
        for info, parent in zip(found, inside):  # a block comes right before its children in the listing
            made.append(made[-1] + (0 if parent else info.nbytes * info.calls))
        end, open_blocks = {}, []
        for i, info in enumerate(found):
            while open_blocks and not info.name.startswith(open_blocks[-1] + "."):
                end[open_blocks.pop()] = i
            open_blocks.append(info.name)
        for name in open_blocks:
            end[name] = len(found)
        largest = max((info.nbytes for info in found), default=0)
        return _Maps({info.name: i for i, info in enumerate(found)}, end, made, largest)

    return loaded.memo("budget.maps", compute)


def map_bytes(loaded: LoadedModel, before: LayerInfo | None = None, after: LayerInfo | None = None) -> int:
    """Bytes of every map one pass makes (each leaf layer's output, times its calls), float32, at the
    model's input size: all of them, those made up to ``before``'s output (included), or those made
    after ``after``'s output.

    >>> from cnnviz.loading import load_model
    >>> from cnnviz.layers import get_layer
    >>> loaded = load_model("resnet18", "random")
    >>> layer2 = get_layer(loaded, "layer2")
    >>> map_bytes(loaded, before=layer2) + map_bytes(loaded, after=layer2) == map_bytes(loaded)
    True
    """
    maps = _maps(loaded)
    lo = maps.end[after.name] if after is not None else 0
    hi = maps.end[before.name] if before is not None else len(maps.made) - 1
    return maps.made[hi] - maps.made[lo]


def input_bytes(loaded: LoadedModel) -> int:
    """Bytes of one input image, ``float32[3,H,W]`` at the model's own size."""
    c, h, w = loaded.input_size
    return 4 * c * h * w


def forward_cost(loaded: LoadedModel) -> Cost:
    """One forward pass without gradients, batch 1: :data:`FORWARD_PEAK_FACTOR` times its largest map
    (or its input, for a model with no listed map), and its measured seconds."""
    largest = _maps(loaded).largest or input_bytes(loaded)
    return Cost(int(FORWARD_PEAK_FACTOR * largest), forward_profile(loaded).seconds)


def _reached(loaded: LoadedModel, info: LayerInfo) -> float:
    """Seconds into the forward pass when ``info``'s output is made (the whole pass if it was not seen)."""
    profile = forward_profile(loaded)
    return min(profile.reached.get(info.name, profile.seconds), profile.seconds)


def cam_cost(loaded: LoadedModel, info: LayerInfo, method: str, batch: int = SCORECAM_BATCH) -> Cost:
    """A class activation map at ``info`` (:func:`cnnviz.attribution.class_activation_map`).

    Gradient methods: one pass, its graph kept from the target layer on when
    :func:`cnnviz.attribution.graph_from_layer` (from the input otherwise), and a backward pass back to
    the layer. Score-CAM: two passes without gradients, then one per channel, ``batch`` masked copies
    of the input at a time.
    """
    forward = forward_cost(loaded)
    if method in MASKING_METHODS:
        kept, per_copy = _scorecam_bytes(loaded, info, method)
        copies = info.shape[0] * masked_rounds(method)
        return Cost(int(kept + batch * per_copy), (2 + COPY_TIME_FACTOR * copies) * forward.seconds)
    graph = map_bytes(loaded, after=info) + info.nbytes if graph_from_layer(info) else map_bytes(loaded)
    back = forward.seconds - _reached(loaded, info)
    one = Cost(int(forward.nbytes + GRAPH_FACTOR * graph), forward.seconds + BACKWARD_TIME_FACTOR * back)
    if method == "smoothgradcampp":  # then one pass and backward pass per noisy copy of the input
        return one.then(_gradient_pass(loaded, None).repeated(CAM_SAMPLES[method]))
    return one


def masked_rounds(method: str) -> int:
    """How many masked copies of the input per channel: 1 for Score-CAM, the noisy samples for SS-CAM,
    the integration steps for IS-CAM (:data:`cnnviz.attribution.CAM_SAMPLES`)."""
    return CAM_SAMPLES.get(method, 1) if method in MASKING_METHODS else 1


def masked_passes(method: str, channels: int, batch: int) -> int:
    """The forward passes of a masking method: two (the class's own score, twice), then a batch of
    masked copies per pass, the channels of each round in ⌈channels / batch⌉ passes.

    >>> masked_passes("scorecam", 64, 32), masked_passes("iscam", 64, 32)
    (4, 22)
    """
    return 2 + masked_rounds(method) * -(-channels // batch)


def attention_cost(loaded: LoadedModel, layout: VitLayout, method: str) -> Cost:
    """A vision transformer's attention map (:mod:`cnnviz.rollout`, LeGrad): the rollout is one pass
    without gradients (plus an N×N per block); gradient-weighted rollout and LeGrad keep the pass's
    graph and go back to the first (LeGrad: to each of its last blocks, one backward pass each)."""
    extra = attention_bytes(layout, method)
    if method == "rollout":
        forward = forward_cost(loaded)
        return Cost(forward.nbytes + extra, forward.seconds)
    graph = _gradient_pass(loaded, None)
    if method == "legrad":
        forward = forward_cost(loaded).seconds
        return Cost(graph.nbytes + extra, forward + BACKWARD_TIME_FACTOR * forward * min(LEGRAD_BLOCKS, len(layout.attention)))
    return Cost(graph.nbytes + extra, graph.seconds)


def _scorecam_bytes(loaded: LoadedModel, info: LayerInfo, method: str = "scorecam") -> tuple[int, float]:
    """Score-CAM's bytes: (kept for the whole run: its own copy of the model, the layer's maps and their
    normalised copy; per masked copy: a pass without gradients, the copy and its upsampled mask).
    SS-CAM and IS-CAM also keep every map upsampled to the input (SS-CAM: and a noisy copy of them)."""
    kept = model_nbytes(loaded.model) + 2 * info.nbytes
    if method in ("sscam", "iscam"):
        _c, h, w = loaded.input_size
        kept += (2 if method == "sscam" else 1) * 4 * info.shape[0] * h * w
    return kept, forward_cost(loaded).nbytes + MASK_COPIES * input_bytes(loaded)


def scorecam_batch(loaded: LoadedModel, info: LayerInfo, method: str = "scorecam") -> int:
    """How many masked copies of the input one Score-CAM (SS-CAM, IS-CAM) pass may take within
    :data:`REQUEST_BYTES`: :data:`cnnviz.attribution.SCORECAM_BATCH` when it fits, fewer when not, at
    least 1. The map does not depend on it (every channel is still scored, a few at a time)."""
    kept, per_copy = _scorecam_bytes(loaded, info, method)
    return max(1, min(SCORECAM_BATCH, int((REQUEST_BYTES - kept) // per_copy)))


def _gradient_pass(loaded: LoadedModel, info: LayerInfo | None) -> Cost:
    """A pass that keeps its whole graph and goes back from ``info`` (None: the output) to the input."""
    forward = forward_cost(loaded)
    back = _reached(loaded, info) if info is not None else forward.seconds
    return Cost(int(forward.nbytes + GRAPH_FACTOR * map_bytes(loaded)), forward.seconds + BACKWARD_TIME_FACTOR * back)


def projection_cost(loaded: LoadedModel, info: LayerInfo) -> Cost:
    """A Zeiler–Fergus projection (:func:`cnnviz.attribution.project`): a pass to find the strongest
    unit, then captum's pass with its whole graph and the backward pass from the unit to the input."""
    return forward_cost(loaded).then(_gradient_pass(loaded, info))


def guided_gradcam_cost(loaded: LoadedModel, info: LayerInfo) -> Cost:
    """Guided Grad-CAM (:func:`cnnviz.attribution.guided_gradcam`): Grad-CAM, then guided backprop of
    the class score from the output to the input."""
    return cam_cost(loaded, info, "gradcam").then(_gradient_pass(loaded, None))


def featurevis_step_cost(loaded: LoadedModel, info: LayerInfo, size: tuple[int, int]) -> Cost:
    """One feature-visualisation step (:func:`cnnviz.featurevis.visualize_channel`) at ``size`` (h, w):
    a pass that stops at ``info`` keeping its graph, and the backward pass to the image; bytes and
    seconds of the model's own input size scaled by the pixels."""
    scale = size[0] * size[1] / (loaded.input_size[1] * loaded.input_size[2])
    graph = GRAPH_FACTOR * map_bytes(loaded, before=info) + forward_cost(loaded).nbytes
    return Cost(int(scale * graph), scale * (1 + BACKWARD_TIME_FACTOR) * _reached(loaded, info))


def export_cost(loaded: LoadedModel, info: LayerInfo) -> Cost:
    """Exporting a layer's maps (``.npy``): a pass, the maps' copy and their file in memory."""
    forward = forward_cost(loaded)
    return Cost(forward.nbytes + 2 * info.nbytes, forward.seconds)


def _importance_per_copy(loaded: LoadedModel, info: LayerInfo) -> int:
    """Bytes per ablated copy in a channel-importance pass: the changed copy of the layer's output, and a
    pass without gradients over the rest of the network (its peak: :func:`forward_cost`'s, a bound)."""
    return forward_cost(loaded).nbytes + info.nbytes


def importance_batch(loaded: LoadedModel, info: LayerInfo) -> int:
    """How many ablated copies one channel-importance pass may take within :data:`REQUEST_BYTES`:
    :data:`cnnviz.intervene.IMPORTANCE_BATCH` when it fits, fewer when not, at least 1 (the drops do not
    depend on it)."""
    return max(1, min(IMPORTANCE_BATCH, info.shape[0], int(REQUEST_BYTES // _importance_per_copy(loaded, info))))


def importance_cost(loaded: LoadedModel, info: LayerInfo, batch: int | None = None) -> Cost:
    """Channel importance at ``info`` (:func:`cnnviz.intervene.channel_importance`): a pass as is, then one
    per ``batch`` channels. Where the batched tail applies (not known to fail for this layer), each pass
    runs the network before the layer once and the rest once per copy, plus one whole copy the first time
    (the check); else every copy runs the whole network. A copy is costed as the rest of the network at
    batch 1 (:data:`COPY_TIME_FACTOR`): measured, the estimate is 1.9–3.5× the CPU seconds at late layers
    (ResNet-18 ``layer4.0.conv1``, ResNet-50 ``layer4.2.conv3``, Lite0 ``blocks.5.0.conv_pwl``: batched copies of a
    small map share the weights' memory traffic) and 1.6–2.1× at early ones (large maps batch less well),
    one thread, batches of 32; a lower factor would under-estimate the early layers."""
    batch = batch or importance_batch(loaded, info)
    forward = forward_cost(loaded)
    channels = info.shape[0]
    passes = -(-channels // batch)
    before = _reached(loaded, info)
    if fast_path_ok(loaded, info) is False:
        seconds = forward.seconds * (1 + COPY_TIME_FACTOR * channels)
    else:
        seconds = forward.seconds * 2 + passes * before + COPY_TIME_FACTOR * channels * (forward.seconds - before)
    return Cost(int(batch * _importance_per_copy(loaded, info)), seconds)


def check_importance(loaded: LoadedModel, info: LayerInfo) -> int:
    """The batch to use (:func:`importance_batch`) once channel importance at ``info`` is known to fit;
    else :class:`InvalidOptionError` saying how many channels would fit (a layer with fewer, or a later
    one: less of the network runs per copy)."""
    batch = importance_batch(loaded, info)
    cost = _estimate(lambda: importance_cost(loaded, info, batch), loaded)
    if cost.fits:
        return batch
    per_channel = cost.seconds / max(info.shape[0], 1)
    most = int(REQUEST_SECONDS / per_channel) if per_channel > 0 else 0
    fits = f"a layer with at most {most:,} channels fits, or a later layer (less of the network runs per channel)" if most \
        else f"channel importance does not fit for {loaded.spec.display}; use a smaller model"
    check(cost, f"Channel importance {_where(loaded, info)} would zero its {info.shape[0]:,} channels one at a time", fits)
    return batch


# --- the checks: refuse with what would fit ---------------------------------------------------------


def _duration(seconds: float) -> str:
    """``"0.04 s"``, ``"4.2 s"``, ``"410 s"``, ``"23 min"``, ``"3.4 h"``."""
    if seconds < 1:
        return f"{max(seconds, 0.01):.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 600:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.1f} h"


def describe_bytes(nbytes: float) -> str:
    """``"310 MB"``, ``"5.2 GB"``.

    >>> describe_bytes(310 * 2**20), describe_bytes(5.2 * 2**30)
    ('310 MB', '5.2 GB')
    """
    return f"{nbytes / 2**30:.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MB"


def describe(cost: Cost) -> str:
    """``cost`` in words: ``"≈ 41 s, ≈ 310 MB"``.

    >>> describe(Cost(310 * 2**20, 41.0))
    '≈ 41 s, ≈ 310 MB'
    """
    return f"≈ {_duration(cost.seconds)}, ≈ {describe_bytes(cost.nbytes)}"


def check(cost: Cost, what: str, fits: str) -> Cost:
    """``cost`` when it is within both budgets; else :class:`InvalidOptionError` with the sentence
    ``"{what} ({the estimate}, the limit is {the budget}); {fits}."``: what the request would do, what
    it would cost against which limit, and what would fit.

    >>> check(Cost(2**20, 1.0), "A pass", "nothing")
    Cost(nbytes=1048576, seconds=1.0)
    >>> check(Cost(2**20, 1e4), "9,000 steps would take long", "at most 100 steps fit")
    Traceback (most recent call last):
    ...
    cnnviz.errors.InvalidOptionError: 9,000 steps would take long (≈ 167 min, the limit is 120 s); at most 100 steps fit.
    """
    over = []
    if cost.seconds > REQUEST_SECONDS:
        over.append(f"≈ {_duration(cost.seconds)}, the limit is {_duration(REQUEST_SECONDS)}")
    if cost.nbytes > REQUEST_BYTES:
        over.append(f"≈ {describe_bytes(cost.nbytes)} of memory, the limit is {describe_bytes(REQUEST_BYTES)}")
    if over:
        raise InvalidOptionError(f"{what} ({'; '.join(over)}); {fits}.")
    return cost


def _estimate(estimate: Callable[[], Cost], *models: LoadedModel) -> Cost:
    """``estimate()``; when only its seconds are over budget, once more after :func:`retime` (the
    models' profiles may have been taken in a neighbour's burst)."""
    cost = estimate()
    if cost.seconds > REQUEST_SECONDS and cost.nbytes <= REQUEST_BYTES:
        retimed = [retime(m) for m in models]  # every model, not only up to the first retaken
        if any(retimed):
            cost = estimate()
    return cost


def _where(loaded: LoadedModel, info: LayerInfo) -> str:
    return f"at {info.name} of {loaded.spec.display}"


def _candidates(loaded: LoadedModel) -> list[LayerInfo]:
    """Layers a class activation map can target (run once per pass, more than one position), in the
    order their outputs are made (a block's after its children's)."""
    maps = _maps(loaded)
    found = [i for i in list_layers(loaded) if i.calls == 1 and i.shape[1] * i.shape[2] > 1]
    return sorted(found, key=lambda i: (maps.end[i.name], -maps.index[i.name]))


def check_cam(loaded: LoadedModel, info: LayerInfo, method: str) -> int:
    """The Score-CAM batch to use (:func:`scorecam_batch`; 1 for the gradient methods) once the class
    activation map at ``info`` is known to fit; else :class:`InvalidOptionError` saying what would:
    for Score-CAM, a layer with fewer channels (its time grows with them) or Grad-CAM; for the gradient
    methods, a later layer (the graph is kept from the target layer on) or a smaller model.
    """
    name = CAM_NAMES.get(method, method)
    if method in MASKING_METHODS:
        batch = scorecam_batch(loaded, info, method)
        cost = _estimate(lambda: cam_cost(loaded, info, method, batch), loaded)
        if not cost.fits:
            _c, h, w = loaded.input_size
            rounds = masked_rounds(method)
            copies = f"{info.shape[0] * rounds:,} masked copies ({info.shape[0]:,} channels × {rounds} " \
                f"{'noisy samples' if method == 'sscam' else 'steps'})" if rounds > 1 else f"{info.shape[0]:,} masked copies"
            check(cost, f"{name} {_where(loaded, info)} would run {copies} of the {h}×{w} input",
                  _scorecam_fits(loaded, info, method))
        return batch
    cost = _estimate(lambda: cam_cost(loaded, info, method), loaded)
    if not cost.fits:
        # the first layer (in the order outputs are made) that fits: the graph kept only shrinks after it
        later = next((i for i in _candidates(loaded) if cam_cost(loaded, i, method).fits), None)
        fits = f"{name} fits from layer {later.name} on (the graph is kept from the target layer on)" if later else \
            f"no layer of {loaded.spec.display} fits for {name}; use a smaller model"
        check(cost, f"{name} {_where(loaded, info)} would keep the pass's maps for the backward pass", fits)
    return 1


def _scorecam_fits(loaded: LoadedModel, info: LayerInfo, method: str = "scorecam") -> str:
    """What fits instead of a Score-CAM (SS-CAM, IS-CAM) at ``info``: at most N channels (a named
    earlier layer), or Grad-CAM with its estimate."""
    name = CAM_NAMES.get(method, method)
    if cam_cost(loaded, info, method, 1).nbytes > REQUEST_BYTES:
        return "even one masked copy per pass does not fit; use Grad-CAM or a smaller model"
    per_pass = forward_cost(loaded).seconds
    most = int((REQUEST_SECONDS / per_pass - 2) / COPY_TIME_FACTOR / masked_rounds(method)) if per_pass > 0 else 0
    found = _candidates(loaded)
    earlier = [i for i in found[: found.index(info)] if i.shape[0] <= most] if info in found else []
    parts = []
    if earlier:  # only where the model has such a layer before this one
        parts.append(f"pick a layer with at most {most:,} channels (such as {earlier[-1].name}, {earlier[-1].shape[0]:,} channels)")
    gradcam = cam_cost(loaded, info, "gradcam")
    if gradcam.fits:
        parts.append(f"use Grad-CAM ({describe(gradcam)})")
    return ", or ".join(parts) or f"{name} does not fit for {loaded.spec.display}; use a smaller model"


def check_attention(loaded: LoadedModel, layout: VitLayout, method: str) -> Cost:
    """:func:`attention_cost` when it fits; else the sentence (the rollout, one pass, is what fits
    instead of the gradient methods; a smaller input or model instead of the rollout)."""
    cost = _estimate(lambda: attention_cost(loaded, layout, method), loaded)
    if cost.fits:
        return cost
    rollout = attention_cost(loaded, layout, "rollout")
    fits = f"attention rollout fits ({describe(rollout)})" if method != "rollout" and rollout.fits else "use a smaller model"
    label = vocab.AttentionMethod(method).label
    what = label[0].upper() + label[1:]
    return check(cost, f"{what} of {loaded.spec.display} would read {len(layout.attention)} blocks' attention over "
                       f"{layout.tokens:,} tokens", fits)


def featurevis_steps(loaded: LoadedModel, info: LayerInfo, size: tuple[int, int]) -> int:
    """The most feature-visualisation steps at ``info`` and ``size`` that fit :data:`REQUEST_SECONDS`
    (0 when one step does not fit in :data:`REQUEST_BYTES`)."""
    step = featurevis_step_cost(loaded, info, size)
    if step.nbytes > REQUEST_BYTES:
        return 0
    final = forward_cost(loaded).seconds  # the last pass that measures the channel on the final image
    return max(0, int((REQUEST_SECONDS - final) / step.seconds)) if step.seconds > 0 else 2**31


def check_featurevis(loaded: LoadedModel, info: LayerInfo, channel: int, size: tuple[int, int], steps: int) -> Cost:
    """The cost of ``steps`` feature-visualisation steps at ``size`` (and the final measuring pass)
    when it fits; else :class:`InvalidOptionError` with the most steps that fit (or, when one step is
    too large, a sentence asking for an earlier layer)."""
    cost = _estimate(lambda: featurevis_step_cost(loaded, info, size).repeated(steps).then(forward_cost(loaded)), loaded)
    if cost.fits:
        return cost
    most = featurevis_steps(loaded, info, size)
    h, w = size
    what = f"Feature visualisation of channel {channel} {_where(loaded, info)} would take {steps:,} steps at {h}×{w}"
    return check(cost, what, f"at most {most:,} steps fit" if most >= 1 else "pick an earlier layer")


def _check_whole_graph(loaded: LoadedModel, estimate: Callable[[], Cost], what: str) -> Cost:
    """A request whose graph is the whole network's (captum's passes): the cost when it fits; else the
    sentence says no layer choice changes that, and whether Grad-CAM fits instead."""
    cost = _estimate(estimate, loaded)
    if cost.fits:
        return cost
    gradcam = cam_cost(loaded, default_layer(loaded), "gradcam")
    alternative = f"Grad-CAM fits ({describe(gradcam)})" if gradcam.fits else "a smaller model would fit"
    return check(cost, f"{what} of {loaded.spec.display} would keep every map of the pass for the backward pass",
                 f"no layer choice changes that; {alternative}")


def check_projection(loaded: LoadedModel, info: LayerInfo, method_name: str) -> Cost:
    """:func:`projection_cost` when it fits; else the sentence (:func:`_check_whole_graph`)."""
    return _check_whole_graph(loaded, lambda: projection_cost(loaded, info), f"A {method_name} projection from {info.name}")


def check_guided_gradcam(loaded: LoadedModel, info: LayerInfo) -> Cost:
    """:func:`guided_gradcam_cost` when it fits; else the sentence (:func:`_check_whole_graph`)."""
    return _check_whole_graph(loaded, lambda: guided_gradcam_cost(loaded, info), f"Guided Grad-CAM at {info.name}")


def check_export(loaded: LoadedModel, info: LayerInfo) -> Cost:
    """:func:`export_cost` when it fits; else the sentence says how large a layer would."""
    cost = _estimate(lambda: export_cost(loaded, info), loaded)
    if cost.fits:
        return cost
    c, h, w = info.shape
    room = (REQUEST_BYTES - forward_cost(loaded).nbytes) / 2
    fits = f"export a layer of at most {describe_bytes(room)}" if room > 0 else "use a smaller model"
    what = f"Exporting {info.name} of {loaded.spec.display} ({c:,}×{h}×{w} float32) would hold its maps twice"
    return check(cost, what, fits)


def check_pair(loaded_a: LoadedModel, loaded_b: LoadedModel, side: Callable[[LoadedModel], Cost], what: str) -> Cost:
    """Both sides of a comparison (``side(loaded)`` each), one after the other: the seconds add up, the
    peak is the larger side's. The cost when it fits; else :class:`InvalidOptionError` saying which
    side alone would fit."""
    cost = _estimate(lambda: side(loaded_a).then(side(loaded_b)), loaded_a, loaded_b)
    if cost.fits:
        return cost
    alone = [f"{loaded.spec.display} ({describe(side(loaded))})" for loaded in (loaded_a, loaded_b) if side(loaded).fits]
    fits = (f"{' and '.join(alone)} alone fit{'s' if len(alone) == 1 else ''}: open {'it' if len(alone) == 1 else 'them'} "
            "one at a time, or compare with a smaller model") if alone else "compare smaller models"
    return check(cost, f"Comparing {loaded_a.spec.display} and {loaded_b.spec.display} ({what}) would run both sides' "
                       "passes one after the other", fits)
