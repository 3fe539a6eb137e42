"""Capturing what layers output: forward hooks that live only inside a context manager.

Every capture gives ``Tensor[C,H,W]`` float32 on the CPU for batch item 0, in the layout it is
drawn in whatever the module's own layout (see :class:`cnnviz.layers.LayerInfo`). Hooks take the
output when it is produced, because in-place ops later in the forward pass (``ReLU(inplace=True)``)
overwrite it. A module called several times per forward pass (torchvision ResNet's shared ``relu``)
is recorded at its first call. Hooks act only for the thread that registered them, so two requests
sharing a model never see each other's activations.
"""
from __future__ import annotations

import io
import os
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import cache, vocab
from .errors import InvalidOptionError, UnknownLayerError, did_you_mean, quoted
from .hooks import forward_hooks, interruptible
from .layers import LayerInfo, find_layers, get_layer, list_layers

if TYPE_CHECKING:
    from .loading import LoadedModel

class _StopForward(Exception):
    """Raised from a hook once everything asked for is captured, to skip the rest of the network."""


def _cpu_copy(maps: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 CPU copy of ``maps``, detached from the model's tensors."""
    return maps.detach().to("cpu", torch.float32, copy=True, memory_format=torch.contiguous_format)


def _by_name(layers: Sequence[LayerInfo]) -> dict[str, LayerInfo]:
    return {layer.name: layer for layer in layers}


DEFAULT_INPUT = (3, 224, 224)  # the input size a bare module's layers are found at, unless timm's config says


def _resolve(model, layers: Sequence[LayerInfo | str]) -> list[LayerInfo]:
    """``layers`` as :class:`LayerInfo`: names looked up in the model's listing (a :class:`LoadedModel`'s,
    or for a bare module one found at its timm ``input_size``, else 3×224×224)."""
    if all(isinstance(layer, LayerInfo) for layer in layers):
        return list(layers)
    if isinstance(model, torch.nn.Module):
        size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", DEFAULT_INPUT))
        listed = {info.name: info for info in find_layers(model, size).layers}
        found = []
        for layer in layers:
            if isinstance(layer, LayerInfo):
                found.append(layer)
            elif layer in listed:
                found.append(listed[layer])
            else:
                hint = did_you_mean(str(layer), list(listed), cutoff=0.5)
                raise UnknownLayerError(f"The model has no layer {quoted(layer)} with a feature-map output.{hint}")
        return found
    return [layer if isinstance(layer, LayerInfo) else get_layer(model, layer) for layer in layers]


@contextmanager
def capture(model: torch.nn.Module | LoadedModel, layers: Sequence[LayerInfo | str],
            stop_early: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the first output of each layer as ``Tensor[C,H,W]`` float32 on the CPU (a copy, batch
    item 0, converted from the layer's layout).

    ``model``: a module, or a :class:`LoadedModel` (its module is hooked). ``layers``: :class:`LayerInfo`
    or qualified names (``"layer1"``, as torchvision's feature extraction takes them), looked up in the
    model's listing; an unknown name raises :class:`UnknownLayerError` with close matches.

    With ``stop_early=True`` the forward pass is cut short once all layers are captured (call the
    model through :func:`run`, which swallows the internal stop signal).

    >>> from cnnviz import get_layer, load_model, preprocess
    >>> loaded = load_model("resnet18", "random")
    >>> x = preprocess.to_input(loaded, preprocess.open_image("examples/cat.png"))
    >>> with capture(loaded.model, [get_layer(loaded, "layer1")]) as out:
    ...     _ = run(loaded.model, x)
    >>> out["layer1"].shape
    torch.Size([64, 56, 56])
    >>> with capture(loaded, ["layer1"]) as out:
    ...     _ = run(loaded.model, x)
    >>> out["layer1"].shape
    torch.Size([64, 56, 56])
    """
    wanted = _by_name(_resolve(model, layers))
    model = model if isinstance(model, torch.nn.Module) else model.model
    store: dict[str, torch.Tensor] = {}

    def on_output(name: str, _inputs: tuple, output) -> None:
        if name in store:
            return
        store[name] = _cpu_copy(wanted[name].to_chw(output))
        if stop_early and len(store) == len(wanted):
            raise _StopForward

    with forward_hooks(model, list(wanted), on_output):
        yield store


def capture_layers(
    loaded: LoadedModel, layers: Sequence[LayerInfo], x: torch.Tensor, with_logits: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass of ``x`` capturing several layers: ``({name: Tensor[C,H,W] float32 cpu}, logits)``.

    The caller holds ``loaded.lock``. Without ``with_logits`` the pass stops right after the last of
    the layers and the logits are None. Each map belongs to the caller alone: outputs that are already
    float32 on the CPU and that the listing did not see overwritten are kept by reference (a view of
    batch item 0, no copy); others are copied when produced. After the pass, an output kept by
    reference whose version counter moved (an in-place change the listing missed) is captured again
    with a copy, so no map is ever kept wrong.
    """
    model = loaded.model
    wanted = _by_name(layers)
    kept: dict[str, tuple[torch.Tensor, int | None]] = {}  # name -> (maps, version when kept by reference)

    def on_output(name: str, _inputs: tuple, output) -> None:
        if name in kept:
            return
        info = wanted[name]
        maps = info.to_chw(output).detach()
        by_reference = not info.overwritten and maps.device.type == "cpu" and maps.dtype == torch.float32
        if by_reference and not torch.is_inference(maps):
            kept[name] = (maps, maps._version)
        else:
            kept[name] = (_cpu_copy(maps), None)
        if not with_logits and len(kept) == len(wanted):
            raise _StopForward

    logits = None
    # no_grad, not inference_mode (even inside a caller's): outputs kept by reference need their version counters
    with forward_hooks(model, list(wanted), on_output), torch.inference_mode(False), torch.no_grad():
        try:
            output = model(x)
            logits = output if with_logits else None
        except _StopForward:
            pass
    store = {name: maps for name, (maps, _) in kept.items()}
    changed = [wanted[name] for name, (maps, version) in kept.items() if version is not None and maps._version != version]
    if changed:
        with capture(model, changed, stop_early=True) as again:
            run(model, x)
        store.update(again)
    return store, logits


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Forward ``x`` without gradients; returns the output, or None when a capture stopped it early."""
    try:
        with torch.inference_mode():
            return model(x)
    except _StopForward:
        return None


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int  # class index: labels repeat in ImageNet ("crane" the bird and the machine)


def top_k(logits: torch.Tensor, categories: Sequence[str] | None, k: int = 5) -> list[Prediction]:
    """Softmax top-k of ``logits[1,N]``; empty when the output is not a classification over known classes.

    >>> top_k(torch.tensor([[0.0, 2.0]]), ["cat", "dog"], k=1)
    [Prediction(label='dog', probability=0.88..., index=1)]
    """
    if k < 1:
        raise InvalidOptionError(f"k must be at least 1, not {k}.")
    if logits is None or logits.ndim != 2 or not categories or logits.shape[1] != len(categories):
        return []
    probs = torch.softmax(logits[0].float(), dim=0)
    values, indices = probs.topk(min(k, probs.numel()))
    return [Prediction(categories[i], float(v), i) for v, i in zip(values.tolist(), indices.tolist())]


CHANNEL_MODES = vocab.values(vocab.Channels)  # see select_channels


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of a layer's maps ``Tensor[C,H,W]`` for one image; each field ``float64[C]``
    (numpy). A channel is *dead* when every value is exactly zero, *constant* when all its values are
    equal (dead channels included)."""

    mean: np.ndarray
    max: np.ndarray
    min: np.ndarray
    std: np.ndarray  # population standard deviation over the H×W positions
    zeros: np.ndarray  # fraction of positions exactly zero
    positive: np.ndarray  # fraction of positions > 0

    @property
    def dead(self) -> np.ndarray:
        """Indices of all-zero channels, ascending."""
        return np.flatnonzero((self.max == 0) & (self.min == 0))

    @property
    def constant(self) -> np.ndarray:
        """Indices of channels with a single value (dead ones included), ascending."""
        return np.flatnonzero(self.max == self.min)

    COLUMNS = ("channel", "mean", "max", "min", "std", "zeros", "positive", "dead")

    def rows(self) -> list[tuple]:
        """One ``(channel, mean, max, min, std, zeros, positive, dead)`` tuple per channel."""
        dead = set(self.dead.tolist())
        return [
            (c, float(self.mean[c]), float(self.max[c]), float(self.min[c]), float(self.std[c]),
             float(self.zeros[c]), float(self.positive[c]), c in dead)
            for c in range(len(self.mean))
        ]

    def to_csv(self) -> str:
        """The rows as CSV with a header line, floats to 17 significant digits (they read back exactly)."""
        values = np.column_stack([self.mean, self.max, self.min, self.std, self.zeros, self.positive])
        dead = np.isin(np.arange(len(self.mean)), self.dead)
        body = io.StringIO()
        np.savetxt(body, values, fmt="%.17g", delimiter=",")
        lines = body.getvalue().splitlines()
        return "".join(f"{line}\n" for line in [",".join(self.COLUMNS)] + [
            f"{c},{row},{flag}" for c, (row, flag) in enumerate(zip(lines, dead.tolist()))
        ])


def channel_stats(maps: torch.Tensor) -> ChannelStats:
    """Statistics of each channel of ``maps`` (``Tensor[C,H,W]`` float32), computed in float64.

    >>> s = channel_stats(torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]]))
    >>> s.mean.tolist(), s.dead.tolist(), s.zeros.tolist()
    ([1.0, 0.0], [1], [0.5, 1.0])
    """
    flat = maps.detach().cpu().reshape(maps.shape[0], -1).numpy()  # numpy: single-threaded, no torch thread hand-offs
    mean = flat.mean(axis=1, dtype=np.float64)
    return ChannelStats(
        mean=mean, max=flat.max(axis=1).astype(np.float64), min=flat.min(axis=1).astype(np.float64),
        std=np.sqrt(np.maximum((np.square(flat, dtype=np.float64)).mean(axis=1) - mean**2, 0.0)),
        zeros=(flat == 0).mean(axis=1), positive=(flat > 0).mean(axis=1),
    )


def select_channels(maps: torch.Tensor, mode: str = "first", n: int = 64) -> torch.Tensor:
    """Indices of the channels to show, in drawing order: the ``first`` ``n``; the ``n`` with the
    highest mean (``top``) or maximum (``top-max``), strongest first; the ``dead`` (all-zero) ones,
    at most ``n``; or ``all``.

    >>> select_channels(torch.rand(8, 4, 4), "first", 3).tolist()
    [0, 1, 2]
    """
    channels = maps.shape[0]
    mode = vocab.option(vocab.Channels, mode, "channel selection")
    if mode == "all":
        return torch.arange(channels)
    n = min(vocab.whole(n, 1, 4096, "The number of channels"), channels)
    if mode == "first":
        return torch.arange(n)
    flat = maps.reshape(channels, -1)
    if mode == "dead":
        return torch.nonzero(~flat.any(dim=1)).flatten()[:n]
    score = flat.mean(dim=1) if mode == "top" else flat.amax(dim=1)
    return torch.sort(score, descending=True, stable=True).indices[:n]


# --------------------------------------------------------------------------------------------------
# The kept pass: layer outputs of recent images, so a layer switch needs no forward pass
# --------------------------------------------------------------------------------------------------


class KeptMaps:
    """Layer outputs of recent images, bounded by bytes (not by images: one image of a 600 px
    EfficientNet is several GB of maps).

    Entries are ``Tensor[C,H,W]`` float32 per (model, image digest, layer), evicted least recently used
    first until their total is within ``budget`` bytes (a :class:`cnnviz.cache.Store`). One pass keeps the
    layer asked for and as many neighbours as fit in ``budget // 4`` bytes (:meth:`window`), so a few
    users' windows fit at once; a single layer larger than the whole budget is returned but not kept.
    Entries of a model the model cache dropped go at the next :meth:`put`.
    """

    def __init__(self, budget: int) -> None:
        self.store: cache.Store[tuple[weakref.ref, torch.Tensor]] = cache.Store("kept maps", budget, keep_oversized=False)

    @property
    def budget(self) -> int:
        return self.store.budget

    @property
    def nbytes(self) -> int:
        return self.store.nbytes

    def get(self, loaded: LoadedModel, digest: bytes, layer: str, copy: bool = True) -> torch.Tensor | None:
        """A copy of the kept maps (``copy=False``: the kept tensor, to be read only), or None."""
        item = self.store.get((id(loaded), digest, layer))
        if item is None or item[0]() is not loaded:
            return None
        return item[1].clone() if copy else item[1]

    def window(self, found: tuple[LayerInfo, ...], info: LayerInfo) -> list[LayerInfo]:
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
        self.store.drop_where(lambda _key, item: item[0]() is None)  # models gone from the model cache
        for name, tensor in maps.items():
            self.store.put((id(loaded), digest, name), (weakref.ref(loaded), tensor), cache.nbytes_of(tensor))

    def clear(self) -> None:
        self.store.clear()


KEPT = KeptMaps(cache.megabytes(os.environ.get("CNNVIZ_KEPT_MB"), 1024))
PREDICTIONS_BYTES = 256 * 2**10  # per model: ~1 KB a top-5, so a few hundred images


def _predictions(loaded: LoadedModel) -> cache.Store[tuple[Prediction, ...]]:
    """The model's recent top-5s, image digest -> predictions (kept with the model)."""
    return loaded.memo("activations.predictions", lambda: cache.Store("predictions", PREDICTIONS_BYTES))


def capture_kept(
    loaded: LoadedModel, x: torch.Tensor, digest: bytes, wanted: Sequence[LayerInfo],
    known: tuple[Prediction, ...] | None = None,
) -> tuple[dict[str, torch.Tensor], tuple[Prediction, ...]]:
    """One pass of ``x`` (``Tensor[1,3,H,W]``, whose digest is ``digest``) capturing ``wanted`` (kept in
    :data:`KEPT`) and, when the top-5 is not ``known`` yet, the logits for it (remembered per digest);
    the pass stops after the last wanted layer when the top-5 is known. Holds the model's lock."""
    with loaded.lock, interruptible(loaded.model):
        store, logits = capture_layers(loaded, wanted, x, with_logits=known is None)
    if known is None:
        known = _predictions(loaded).put(digest, tuple(top_k(logits, loaded.categories)))
    KEPT.put(loaded, digest, store)
    return store, known


def kept_predictions(loaded: LoadedModel, digest: bytes) -> tuple[Prediction, ...] | None:
    """The top-5 remembered for the image of ``digest``, or None."""
    return _predictions(loaded).get(digest)


def top5(loaded: LoadedModel, x: torch.Tensor, digest: bytes) -> tuple[Prediction, ...]:
    """The model's top-5 for its input ``x`` (remembered per image digest; one full pass otherwise)."""
    known = kept_predictions(loaded, digest)
    return known if known is not None else capture_kept(loaded, x, digest, [], None)[1]


def layer_maps(
    loaded: LoadedModel, x: torch.Tensor, digest: bytes, info: LayerInfo, copy: bool = True
) -> tuple[torch.Tensor, tuple[Prediction, ...]]:
    """The layer's maps ``Tensor[C,H,W]`` and the top-5 for an image, with as few passes as the byte
    budget allows. ``copy=False``: the kept tensor itself, for callers that only read it.

    A new image costs one pass, which gives the predictions and keeps the layers around the one asked
    for (as many as :data:`KEPT` allows per pass); a switch to a kept layer costs no pass, a switch
    beyond them one pass that stops right after the new window."""
    known = kept_predictions(loaded, digest)
    maps = KEPT.get(loaded, digest, info.name, copy)
    if maps is not None and known is not None:
        return maps, known
    store, known = capture_kept(loaded, x, digest, KEPT.window(list_layers(loaded), info), known)
    return (store[info.name].clone() if copy else store[info.name]), known
