"""Which modules produce feature maps: every module with a 4-D output, in forward order, with its shape."""
from __future__ import annotations

import difflib
import threading
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from .activations import forward_hooks
from .errors import UnknownLayerError

if TYPE_CHECKING:
    from .registry import LoadedModel


@dataclass(frozen=True)
class LayerInfo:
    """A module whose output is a feature map (``Tensor[1,C,H,W]``)."""

    name: str  # qualified name from named_modules(): "layer2.1.conv2"
    type: str  # "Conv2d"
    shape: tuple[int, int, int]  # (C, H, W) of its first call
    calls: int  # how many times the module runs per forward pass
    overwritten: bool = False  # its output is changed in place later in the pass (e.g. ReLU(inplace=True))

    @property
    def label(self) -> str:
        """Selector label, e.g. ``"layer2.1.conv2 · Conv2d · 128×28×28"``."""
        c, h, w = self.shape
        again = f" · called {self.calls}×, first call" if self.calls > 1 else ""
        return f"{self.name} · {self.type} · {c}×{h}×{w}{again}"


def find_layers(model: torch.nn.Module, input_size: tuple[int, int, int], device: torch.device | str = "cpu") -> tuple[LayerInfo, ...]:
    """Run one forward pass on zeros and list the modules with a 4-D output, in the order they finish.

    >>> [l.name for l in find_layers(torchvision.models.alexnet(), (3, 224, 224))][:2]
    ['features.0', 'features.1']
    """
    modules = dict(model.named_modules())
    order: dict[str, LayerInfo] = {}
    outputs: dict[str, tuple[torch.Tensor, int]] = {}

    def on_output(name: str, output) -> None:
        if name in order:
            info = order[name]
            order[name] = LayerInfo(info.name, info.type, info.shape, info.calls + 1)
        elif isinstance(output, torch.Tensor) and output.ndim == 4:
            shape = tuple(int(s) for s in output.shape[1:])
            order[name] = LayerInfo(name, type(modules[name]).__name__, shape, 1)
            outputs[name] = (output, output._version)

    with forward_hooks(model, None, on_output), torch.no_grad():  # no_grad, not inference_mode: keeps version counters
        model(torch.zeros(1, *input_size, device=device))
    return tuple(
        replace(info, overwritten=outputs[name][0]._version != outputs[name][1]) for name, info in order.items()
    )


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def list_layers(loaded: LoadedModel) -> tuple[LayerInfo, ...]:
    """The feature-map layers of a loaded model (computed once per loaded model)."""
    with _LOCK:
        cached = _CACHE.get(loaded)
    if cached is None:
        with loaded.lock:
            cached = find_layers(loaded.model, loaded.input_size, loaded.device)
        with _LOCK:
            _CACHE[loaded] = cached
    return cached


def get_layer(loaded: LoadedModel, name: str | None) -> LayerInfo:
    """The layer called ``name``; None or "" means the first convolution. Unknown names raise with close matches."""
    layers = list_layers(loaded)
    if not name:
        first = first_conv_name(loaded.model)
        return next((l for l in layers if l.name == first), layers[0])
    for layer in layers:
        if layer.name == name:
            return layer
    close = difflib.get_close_matches(str(name), [l.name for l in layers], n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Valid layers start with: {', '.join(l.name for l in layers[:5])}."
    raise UnknownLayerError(
        f"{loaded.spec.display} has no layer {str(name)[:80]!r} with a feature-map output.{hint}"
    )


def first_conv_name(model: torch.nn.Module) -> str:
    """Qualified name of the first 2-D convolution that sees the input image.

    timm models say which one in ``pretrained_cfg["first_conv"]``; otherwise the first ``Conv2d``
    with 3 input channels (then any ``Conv2d``) in definition order.

    >>> first_conv_name(torchvision.models.alexnet())
    'features.0'
    """
    modules = dict(model.named_modules())
    declared = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(declared, str) and isinstance(modules.get(declared), torch.nn.Conv2d):
        return declared
    convs = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise UnknownLayerError("This model has no 2-D convolution, so it has no filters to show.")
    rgb = [n for n in convs if modules[n].in_channels == 3]
    return (rgb or convs)[0]
