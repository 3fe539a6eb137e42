"""Which modules produce maps of the image, their layout, drawn shape and order.

One forward pass on zeros (the model's own square input size) records each module's first output
and decides how it is laid out. The rule, from the output's shape and what the model says:

* **NCHW** — a 4-D ``[1, C, H, W]`` whose ``H×W`` is a grid of the input's shape (a square input gives
  square maps, ``H == W``; a 96×128 input 48×64 or 3×4 maps: ``H`` within one of ``W × 96/128``);
* **NHWC** — a 4-D ``[1, H, W, C]`` whose ``H×W`` is such a grid (ConvNeXt/Swin/MaxViT/EdgeNeXt blocks
  run on channels-last tensors: ``Permute``, ``LayerNorm``, ``Linear``). A shape that reads both ways
  (a cube ``C == H == W`` for a square input) takes the layout of its input (the image, or a listed
  output) or, for a ``Permute``, the layout it produces; one whose layout cannot be known is left out;
* **tokens** — a 3-D ``[1, T, D]`` whose ``T`` is a patch grid the model declares (timm
  ``patch_embed.grid_size``, or ``img_size // patch_size``; torchvision ViT ``image_size //
  patch_size``), possibly after its prefix tokens (timm ``num_prefix_tokens``, else one per class
  token); the prefix is set aside and the rest drawn as ``D×gh×gw``.

Everything else is left out, and :func:`listing_note` says why: per-head tensors inside an
attention module (its ``num_heads`` shows up as a dimension: queries/keys per head, attention
weights), windows or patches cut out of the image (their first dimension is not the batch of one),
and shapes with no square map (token sequences off the declared grid, non-square 4-D tensors).
"""
from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .errors import CnnvizError, UnknownLayerError, did_you_mean, plural, quoted
from .hooks import forward_hooks

if TYPE_CHECKING:
    from .loading import LoadedModel

Layout = Literal["NCHW", "NHWC", "tokens"]


@dataclass(frozen=True)
class LayerInfo:
    """A module whose output is a map of the image, drawn as ``Tensor[C,H,W]``."""

    name: str  # qualified name from named_modules(): "layer2.1.conv2"
    type: str  # "Conv2d"
    shape: tuple[int, int, int]  # (C, H, W) as drawn, of its first call
    calls: int  # how many times the module runs per forward pass
    layout: Layout = "NCHW"  # how the raw output holds that map
    prefix: int = 0  # tokens only: leading (class, register, distillation) tokens set aside
    overwritten: bool = False  # its output is changed in place later in the pass (e.g. ReLU(inplace=True))

    @property
    def label(self) -> str:
        """Selector label, e.g. ``"layer2.1.conv2 · Conv2d · 128×28×28"`` or
        ``"stages.0.blocks.0.mlp.fc1 · Linear · 384×56×56, channels-last"``."""
        c, h, w = self.shape
        again = f" · called {self.calls}×, first call" if self.calls > 1 else ""
        return f"{self.name} · {self.type} · {c}×{h}×{w}{_layout_words(self.layout, self.prefix)}{again}"

    @property
    def nbytes(self) -> int:
        """Bytes of the drawn map as ``float32[C,H,W]``."""
        c, h, w = self.shape
        return c * h * w * 4

    def to_chw(self, output: torch.Tensor) -> torch.Tensor:
        """Batch item 0 of this layer's raw ``output`` as ``Tensor[C,H,W]``: a view, not a copy.

        NCHW ``[N,C,H,W]`` → ``[C,H,W]``; NHWC ``[N,H,W,C]`` → permuted; tokens ``[N,T,D]`` → the
        prefix tokens dropped and the rest reshaped row by row to ``[D,H,W]``.

        Raises:
            CnnvizError: the output does not have the layout this layer was listed with (a model
                whose structure changes with its input).
        """
        return self.to_nchw(output)[0]

    def to_nchw(self, output: torch.Tensor) -> torch.Tensor:
        """Every batch item of this layer's raw ``output`` as ``Tensor[N,C,H,W]`` (a view; see :meth:`to_chw`)."""
        c, h, w = self.shape
        if not isinstance(output, torch.Tensor) or output.ndim != (3 if self.layout == "tokens" else 4):
            raise CnnvizError(
                f"Layer {self.name!r} was listed as a {self.layout} map but gave "
                f"{tuple(getattr(output, 'shape', ()))}; it cannot be drawn for this input."
            )
        if self.layout == "NCHW":
            return output
        if self.layout == "NHWC":
            return output.permute(0, 3, 1, 2)
        if output.shape[1] != self.prefix + h * w:
            raise CnnvizError(
                f"Layer {self.name!r} was listed with {self.prefix + h * w} tokens but gave "
                f"{output.shape[1]}; it cannot be drawn for this input."
            )
        return output[:, self.prefix :].reshape(output.shape[0], h, w, output.shape[2]).permute(0, 3, 1, 2)


def _layout_words(layout: Layout, prefix: int) -> str:
    """What a label adds for a layout other than NCHW."""
    if layout == "NHWC":
        return ", channels-last"
    if layout == "tokens":
        return ", patch tokens" + (f", {plural(prefix, 'prefix token')} set aside" if prefix else "")
    return ""


@dataclass(frozen=True)
class LeftOut:
    """A module with a 3-D or larger tensor output that is not a map of the image."""

    name: str
    type: str
    shape: tuple[int, ...]  # the raw output's shape, batch included
    reason: str  # "heads": per-head attention tensor; "windows": windows or patches; "no map": no square H×W


@dataclass(frozen=True)
class Listing:
    """What :func:`find_layers` found: the listed layers in forward order (the order modules start, so a
    parent comes before its children), and what it left out."""

    layers: tuple[LayerInfo, ...]
    left_out: tuple[LeftOut, ...]


def find_layers(model: torch.nn.Module, input_size: tuple[int, int, int], device: torch.device | str = "cpu") -> Listing:
    """Run one forward pass on zeros and list the modules whose output is a map of the image, in
    forward order: the order in which modules start, so a block comes before the modules inside it
    (``bn1`` before ``bn1.act``). Modules that hand their input on untouched (``Identity``, and
    ``Dropout`` / ``DropPath`` in eval mode) are not listed: their map is their input's.

    Only shapes are kept, not the outputs: each recorded output is watched through a weak reference,
    and at every later module boundary (pre- and post-hook) the version counters of those still alive
    are compared with their values when recorded, so an in-place change later in the pass marks the
    layer ``overwritten``. An output modified in place and freed before the next module boundary is
    missed; :func:`cnnviz.activations.capture_layers` checks the version of every output it keeps by
    reference, so such a miss costs a second pass, never a wrong map.

    >>> import torchvision
    >>> [l.name for l in find_layers(torchvision.models.alexnet(), (3, 224, 224)).layers][:3]
    ['features', 'features.0', 'features.1']
    """
    modules = dict(model.named_modules())
    grids = _token_grids(model)
    prefix = _prefix_tokens(model)
    with torch.inference_mode(False):  # a normal tensor even inside a caller's inference_mode
        x = torch.zeros(1, *input_size, device=device)
    found: dict[str, LayerInfo] = {}
    left_out: dict[str, LeftOut] = {}
    calls: Counter[str] = Counter()
    watched: dict[str, tuple[weakref.ref, int]] = {}  # listed outputs still alive: (output, version when listed)
    overwritten: set[str] = set()
    started: dict[str, int] = {}  # first-call start order: parents before their children
    entered: dict[str, tuple[torch.Tensor, int]] = {}  # first call's first input and its version on entry

    def on_input(name: str, inputs: tuple) -> None:
        check_versions()
        if name not in started:
            started[name] = len(started)
            first = inputs[0] if inputs else None
            if isinstance(first, torch.Tensor):
                entered[name] = (first, first._version)

    def passed_through(name: str, output) -> bool:
        """Whether the module handed its input on untouched (Identity, Dropout and DropPath at eval):
        the same tensor, not changed in place (an in-place ReLU returns its input, changed). Forgets
        the input, so the listing holds no tensor beyond the module's own call."""
        first, version = entered.pop(name, (None, None))
        return first is not None and output is first and output._version == version

    def check_versions(_name: str = "", _inputs: tuple = ()) -> None:
        for name, (ref, version) in list(watched.items()):
            tensor = ref()
            if tensor is None:
                del watched[name]
            elif tensor._version != version:
                overwritten.add(name)

    def input_layout(inputs: tuple) -> Layout | None:
        """The layout of a module's first input when it is the image or a listed output still alive."""
        first = inputs[0] if inputs else None
        if first is x:
            return "NCHW"
        return next((found[n].layout for n, (ref, _) in watched.items() if ref() is first), None) if first is not None else None

    def on_output(name: str, inputs: tuple, output) -> None:
        check_versions()
        calls[name] += 1
        untouched = passed_through(name, output) if calls[name] == 1 else False
        if calls[name] > 1 or not isinstance(output, torch.Tensor) or output.ndim < 3:
            return
        module = modules[name]
        decided = _classify(tuple(output.shape), module, _heads_around(name, modules), grids, prefix, input_layout(inputs),
                            tuple(input_size[1:]))
        if isinstance(decided, str):
            left_out[name] = LeftOut(name, type(module).__name__, tuple(output.shape), decided)
            return
        if untouched:
            return  # its map is its input's: listing it again would only repeat a layer
        layout, shape, set_aside = decided
        found[name] = LayerInfo(name, type(module).__name__, shape, 1, layout, set_aside)
        watched[name] = (weakref.ref(output), output._version)

    # no_grad, not inference_mode, even inside a caller's inference_mode: version counters must be kept
    with forward_hooks(model, None, on_output, on_input=on_input), torch.inference_mode(False), torch.no_grad():
        model(x)
    check_versions()
    entered.clear()
    layers = tuple(
        LayerInfo(i.name, i.type, i.shape, calls[i.name], i.layout, i.prefix, i.name in overwritten)
        for i in sorted(found.values(), key=lambda i: started.get(i.name, len(started)))
    )
    return Listing(layers, tuple(left_out.values()))


def _classify(
    shape: tuple[int, ...],
    module: torch.nn.Module,
    heads: frozenset[int],
    grids: frozenset[tuple[int, int]],
    prefix: int,
    input_layout: Layout | None,
    image: tuple[int, int] = (1, 1),
) -> tuple[Layout, tuple[int, int, int], int] | str:
    """(layout, drawn (C, H, W), prefix set aside) for a raw output ``shape``, or a LeftOut reason;
    ``image``: the input's (height, width)."""
    if shape[0] != 1:
        return "windows"
    decided = _map_layout(shape, module, grids, prefix, input_layout, image)
    if len(shape) == 4 and heads & ({decided[1][0]} if decided else {shape[1]}):
        return "heads"  # [1, heads, T, T] attention weights, [1, heads, T, d] queries/keys, [1, T, T, heads]
    return decided or "no map"


def _map_layout(
    shape: tuple[int, ...],
    module: torch.nn.Module,
    grids: frozenset[tuple[int, int]],
    prefix: int,
    input_layout: Layout | None,
    image: tuple[int, int] = (1, 1),
) -> tuple[Layout, tuple[int, int, int], int] | None:
    """The map a batch-of-one output ``shape`` holds, by the rule in the module docstring."""
    if len(shape) == 3:
        for gh, gw in sorted(grids):
            for p in sorted({0, prefix}):
                if shape[1] == p + gh * gw:
                    return "tokens", (shape[2], gh, gw), p
        return None
    if len(shape) != 4:
        return None
    _, a, b, c = shape
    chw, hwc = _is_grid(b, c, image), _is_grid(a, b, image)
    if chw and not hwc:
        return "NCHW", (a, b, c), 0
    if hwc and not chw:
        return "NHWC", (c, a, b), 0
    if chw and hwc:
        layout = _permute_layout(module) or input_layout
        if layout == "NCHW":
            return layout, (a, b, c), 0
        return (layout, (c, a, b), 0) if layout == "NHWC" else None
    return None


def _is_grid(h: int, w: int, image: tuple[int, int]) -> bool:
    """Whether an ``h×w`` map has the ``image``'s (height, width) shape at some stride, to within rounding:
    ``|h·width − w·height| < max(height, width)`` (for a square image exactly ``h == w``).

    >>> _is_grid(7, 7, (224, 224)), _is_grid(7, 8, (224, 224)), _is_grid(3, 4, (96, 128)), _is_grid(45, 61, (96, 128))
    (True, False, True, True)
    """
    height, width = image
    return abs(h * width - w * height) < max(height, width)


def _permute_layout(module: torch.nn.Module) -> Layout | None:
    """The layout a 4-D permutation module (torchvision's ``Permute``) produces, else None."""
    if type(module).__name__ != "Permute":
        return None
    return {(0, 2, 3, 1): "NHWC", (0, 3, 1, 2): "NCHW"}.get(tuple(getattr(module, "dims", ()) or ()))


def _heads_around(name: str, modules: dict[str, torch.nn.Module]) -> frozenset[int]:
    """Head counts (``num_heads`` / ``n_heads``) of the module and the modules that contain it."""
    parts = name.split(".")
    heads = set()
    for i in range(1, len(parts) + 1):  # the module and its parents, not the root model
        module = modules.get(".".join(parts[:i]))
        for attr in ("num_heads", "n_heads"):
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                heads.add(value)
    return frozenset(heads)


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _token_grids(model: torch.nn.Module) -> frozenset[tuple[int, int]]:
    """The square patch grids the model declares: a module's ``grid_size``, else its image size
    (``img_size`` / ``image_size``) over its ``patch_size``."""
    grids = set()
    for module in model.modules():
        grid = _pair(getattr(module, "grid_size", None))
        if grid is None:
            image = _pair(getattr(module, "img_size", None) or getattr(module, "image_size", None))
            patch = _pair(getattr(module, "patch_size", None))
            if image and patch and patch[0] > 0 and patch[1] > 0:
                grid = (image[0] // patch[0], image[1] // patch[1])
        if grid and grid[0] == grid[1] > 0:
            grids.add(grid)
    return frozenset(grids)


def _prefix_tokens(model: torch.nn.Module) -> int:
    """Tokens before the patches: timm's ``num_prefix_tokens``, else 1 when the model has a class
    token parameter (torchvision ViT ``class_token``, timm CrossViT ``cls_token_<branch>``)."""
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    names = (n.rsplit(".", 1)[-1] for n, _ in model.named_parameters())
    return int(any(n == "class_token" or n.startswith("cls_token") for n in names))


def _listing(loaded: LoadedModel) -> Listing:
    """The listing of a loaded model, computed once per loaded model (kept on it)."""

    def compute() -> Listing:
        with loaded.lock:
            return find_layers(loaded.model, loaded.input_size, loaded.device)

    return loaded.memo("layers.listing", compute)


def list_layers(loaded: LoadedModel) -> tuple[LayerInfo, ...]:
    """The layers of a loaded model whose output is a map of the image, in forward order (parents before
    their children), pass-through modules left out."""
    return _listing(loaded).layers


def listing_note(loaded: LoadedModel) -> str | None:
    """A sentence for the layer picker saying what was left out and how tokens are drawn, or None
    when every output with an image-like shape is listed (plain CNNs).

    >>> from cnnviz.loading import load_model
    >>> listing_note(load_model("timm/vit_tiny_patch16_224", "random"))
    'Listed: outputs that are maps of the image. Left out: 24 per-head tensors inside attention ...'
    """
    listing = _listing(loaded)
    counts = Counter(item.reason for item in listing.left_out)
    parts = [
        f"{plural(counts['heads'], 'per-head tensor')} inside attention (queries, keys, attention weights)" if counts["heads"] else "",
        f"{plural(counts['windows'], 'tensor')} of windows or patches cut out of the image" if counts["windows"] else "",
        f"{plural(counts['no map'], 'tensor')} with no square map (token sequences off the patch grid, other shapes)" if counts["no map"] else "",
    ]
    sentences = []
    if counts:
        sentences.append("Listed: outputs that are maps of the image. Left out: " + "; ".join(p for p in parts if p) + ".")
    tokens = [layer for layer in listing.layers if layer.layout == "tokens"]
    if tokens:
        grids = ", ".join(dict.fromkeys(f"{layer.shape[1]}×{layer.shape[2]}" for layer in tokens))
        aside = " with the class and other prefix tokens set aside" if any(layer.prefix for layer in tokens) else ""
        sentences.append(f"Patch tokens are drawn on their patch grid ({grids}){aside}.")
    return " ".join(sentences) or None


def get_layer(loaded: LoadedModel, name: str | None) -> LayerInfo:
    """The layer called ``name``; None or "" means the first convolution. Unknown names raise with close matches."""
    layers = list_layers(loaded)
    if not layers:
        raise UnknownLayerError(f"{loaded.spec.display} has no layer whose output is a map of the image.")
    if not name:
        first = first_conv_name(loaded.model)
        return next((info for info in layers if info.name == first), layers[0])
    for layer in layers:
        if layer.name == name:
            return layer
    hint = did_you_mean(str(name), [info.name for info in layers], cutoff=0.5)
    hint = hint or f" Valid layers start with: {', '.join(info.name for info in layers[:5])}."
    raise UnknownLayerError(f"{loaded.spec.display} has no layer {quoted(name)} with a feature-map output.{hint}")


def first_conv_name(model: torch.nn.Module) -> str:
    """Qualified name of the first 2-D convolution that sees the input image.

    timm models say which one in ``pretrained_cfg["first_conv"]``; otherwise the first ``Conv2d``
    with 3 input channels (then any ``Conv2d``) in definition order.

    >>> import torchvision
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
