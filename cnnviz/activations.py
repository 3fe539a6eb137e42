"""Capturing what layers output: forward hooks that live only inside a context manager.

Hooks copy the output (detached, on the CPU) when it is produced, because in-place ops later in the
forward pass (``ReLU(inplace=True)``) overwrite it. A module called several times per forward pass
(torchvision ResNet's shared ``relu``) is recorded at its first call. Hooks act only for the thread
that registered them, so two requests sharing a model never see each other's activations.
"""
from __future__ import annotations

import difflib
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch

from .errors import InvalidOptionError, UnknownLayerError

if TYPE_CHECKING:
    from .layers import LayerInfo
    from .registry import LoadedModel

OutputFn = Callable[[str, torch.Tensor], None]


class _StopForward(Exception):
    """Raised from a hook once everything asked for is captured, to skip the rest of the network."""


@contextmanager
def forward_hooks(model: torch.nn.Module, names: Sequence[str] | None, on_output: OutputFn) -> Iterator[None]:
    """Call ``on_output(name, output)`` for each named module's output during forwards in this block.

    ``names=None`` hooks every submodule. The model runs in eval mode inside the block; its training
    mode is restored and every hook removed on exit, even when the forward pass raises.

    >>> with forward_hooks(model, ["conv1"], lambda n, t: print(n, tuple(t.shape))):
    ...     _ = model(x)
    conv1 (1, 64, 112, 112)
    """
    modules = dict(model.named_modules())
    wanted = [n for n in modules if n] if names is None else list(names)
    missing = [n for n in wanted if n not in modules]
    if missing:
        close = difflib.get_close_matches(str(missing[0]), list(modules), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownLayerError(f"The model has no module named {str(missing[0])[:80]!r}.{hint}")
    owner = threading.get_ident()
    handles = []
    saved_mode = model.training

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if threading.get_ident() == owner:
                on_output(name, output)

        return hook

    try:
        model.eval()
        for name in wanted:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        model.train(saved_mode)


@contextmanager
def capture(model: torch.nn.Module, layers: Sequence[str], stop_early: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the first output of each layer in ``layers`` as ``Tensor[C,H,W]`` float32 on the CPU.

    With ``stop_early=True`` the forward pass is cut short once all layers are captured (call the
    model through :func:`run`, which swallows the internal stop signal).

    >>> with capture(model, ["layer1"]) as out:
    ...     run(model, x)
    >>> out["layer1"].shape
    torch.Size([64, 56, 56])
    """
    store: dict[str, torch.Tensor] = {}
    remaining = set(layers)

    def on_output(name: str, output) -> None:
        if name in store or not isinstance(output, torch.Tensor):
            return
        store[name] = output[0].detach().to("cpu", torch.float32, copy=True)
        remaining.discard(name)
        if stop_early and not remaining:
            raise _StopForward

    with forward_hooks(model, list(layers), on_output):
        yield store


def capture_all(
    model: torch.nn.Module, layers: Sequence[LayerInfo], x: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One full forward pass that keeps every layer's output, ``{name: Tensor[1,C,H,W]}`` on the
    model's device, and returns the model output too.

    Outputs that stay intact are kept by reference (no copy); those that :func:`cnnviz.layers.find_layers`
    saw overwritten in place later in the pass are copied. An output changed in place unexpectedly
    (its version counter moved) is left out rather than kept wrong.
    """
    copy = {layer.name for layer in layers if layer.overwritten}
    store: dict[str, tuple[torch.Tensor, int]] = {}

    def on_output(name: str, output) -> None:
        if name not in store and isinstance(output, torch.Tensor):
            kept = output.detach().clone() if name in copy else output.detach()
            store[name] = (kept, output._version)

    with forward_hooks(model, [layer.name for layer in layers], on_output), torch.no_grad():
        logits = model(x)
    return {n: t for n, (t, v) in store.items() if n in copy or t._version == v}, logits


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


@dataclass(frozen=True)
class Analysis:
    layer: str
    maps: torch.Tensor  # [C,H,W] float32, cpu
    predictions: list[Prediction] | None  # None when not computed (early stop)


def analyse(loaded: LoadedModel, x: torch.Tensor, layer: str, with_predictions: bool = True) -> Analysis:
    """One forward pass: the layer's feature maps and, if asked, the top-5 predictions.

    Without predictions the pass stops right after ``layer``.
    """
    with capture(loaded.model, [layer], stop_early=not with_predictions) as store:
        logits = run(loaded.model, x)
    predictions = top_k(logits, loaded.categories) if with_predictions and isinstance(logits, torch.Tensor) else None
    return Analysis(layer, store[layer], predictions)


CHANNEL_MODES = ("first", "all", "top")


def select_channels(maps: torch.Tensor, mode: str = "first", n: int = 64) -> torch.Tensor:
    """Indices of the channels to show: the first ``n``, all, or the ``n`` with the highest mean activation.

    >>> select_channels(torch.rand(8, 4, 4), "first", 3).tolist()
    [0, 1, 2]
    """
    channels = maps.shape[0]
    if mode not in CHANNEL_MODES:
        raise InvalidOptionError(f"Unknown channel selection {mode!r}; use one of {', '.join(CHANNEL_MODES)}.")
    if mode == "all":
        return torch.arange(channels)
    if not 1 <= int(n) <= 4096:
        raise InvalidOptionError(f"The number of channels must be between 1 and 4096, not {n}.")
    n = min(int(n), channels)
    if mode == "first":
        return torch.arange(n)
    return maps.mean(dim=(1, 2)).topk(n).indices
