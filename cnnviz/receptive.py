"""Where a layer sits relative to the input: its stride (how many input pixels one step of its map
covers) and its theoretical receptive field (how many input pixels one of its positions can see).

Computed by tracing one forward pass, not by walking modules in order: a module-order walk (what
``torchscan`` and similar tools do) compounds parallel branches as if they ran one after another —
a ResNet's 1×1 stride-2 shortcut would halve the stride twice, an Inception block would add its
branches' kernels. Here every tensor of the pass carries its own geometry, per axis (jump ``j``:
input pixels per step; receptive field ``r``), and each operation computes its output's from its
inputs':

* convolutions and pools (``conv2d``, ``max_pool2d``, ``avg_pool2d``, and their ``torch.*`` forms):
  ``r' = r + (k - 1) · d · j`` and ``j' = j · s``;
* operations that mix every position (attention, matrix products over tokens, adaptive or global
  pooling to one position): the whole input;
* everything else (activations, normalisation, additions, concatenation, reshapes, padding): the
  largest of its inputs' (a sum of branches sees what its widest branch sees).

No library traces receptive fields through arbitrary graphs (torchscan walks modules in order), so
this is written here; it is checked against published figures (AlexNet, VGG-16, ResNet-50) and a
hand-computed branching model in ``tests/test_receptive.py``.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import xxhash
from torch.overrides import TorchFunctionMode

from .hooks import forward_hooks

if TYPE_CHECKING:
    from .layers import LayerInfo
    from .loading import LoadedModel


@dataclass(frozen=True)
class Geometry:
    """Per axis (height, width): ``stride`` in input pixels between neighbouring positions of the
    map, and ``field``, the side of the input window one position can see (theoretical: every path
    counted, padding included). ``whole`` is True when some operation mixed all positions (attention);
    ``context`` when a summary of the whole input was mixed into a local map (squeeze-and-excitation
    gates from global pooling): the field is still local, and said so. ``pooled`` marks a global
    summary itself (a 1×1 map or a vector made by pooling over every position)."""

    stride: tuple[float, float]
    field: tuple[int, int]
    whole: bool = False
    context: bool = False
    pooled: bool = False

    def describe(self, input_size: tuple[int, int]) -> str:
        """E.g. ``"stride 16 · receptive field 99×99 px of the 224×224 input"``."""
        sh, sw = (int(s) if float(s).is_integer() else round(s, 2) for s in self.stride)
        stride = f"stride {sh}" if sh == sw else f"stride {sh}×{sw}"
        h, w = input_size
        if self.whole or self.pooled:
            return f"{stride} · sees the whole {h}×{w} input (attention or global pooling mixes every position)"
        fh, fw = self.field
        covers = " (all of it)" if fh >= h and fw >= w else ""
        context = ", plus a summary of the whole input (squeeze-and-excitation: global pooling)" if self.context else ""
        return f"{stride} · receptive field {fh}×{fw} px of the {h}×{w} input{covers}{context}"


_WINDOWED = {
    F.conv2d: "conv", torch.conv2d: "conv",
    F.max_pool2d: "max", torch.max_pool2d: "max", F.max_pool2d_with_indices: "max", F._max_pool2d: "max",
    F.avg_pool2d: "avg", torch._C._nn.avg_pool2d: "avg",
}
_MIXING = {
    F.scaled_dot_product_attention, torch.matmul, torch.bmm, torch.einsum, torch.Tensor.__matmul__,
    torch.Tensor.matmul, torch.Tensor.bmm, F.multi_head_attention_forward, torch._native_multi_head_attention,
}
_ADAPTIVE = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch._C._nn.adaptive_avg_pool2d, F.adaptive_max_pool2d_with_indices}


def _widest(found: list[Geometry]) -> Geometry:
    """The geometry of an elementwise combination: the largest stride and field of its inputs."""
    return Geometry(
        (max(g.stride[0] for g in found), max(g.stride[1] for g in found)),
        (max(g.field[0] for g in found), max(g.field[1] for g in found)),
        any(g.whole for g in found), any(g.context for g in found), all(g.pooled for g in found),
    )


def _summary(out, args: tuple) -> bool:
    """Whether ``out`` is a 1×1 map (NCHW ``[N,C,1,1]`` or NHWC ``[N,1,1,C]``) made from a larger
    4-D map (``x.mean((2, 3), keepdim=True)`` in timm's squeeze-and-excitation)."""
    first = args[0] if args else None
    if not (isinstance(out, torch.Tensor) and isinstance(first, torch.Tensor) and out.ndim == 4 and first.ndim == 4):
        return False
    one_by_one = out.shape[2] == out.shape[3] == 1 or out.shape[1] == out.shape[2] == 1
    return one_by_one and first.shape[1:].numel() > out.shape[1:].numel()


def _pair(value, default) -> tuple[int, int]:
    if value is None:
        value = default
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


class _Tracer(TorchFunctionMode):
    """Gives every tensor produced inside the mode a :class:`Geometry` (:meth:`get`); tensors are
    held weakly, by identity (a tensor's ``==`` is elementwise, so no weak dictionary)."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self._geometry: dict[int, tuple[weakref.ref, Geometry]] = {}
        self._set(image, Geometry((1.0, 1.0), (1, 1)))
        self.side = tuple(image.shape[-2:])

    def _set(self, tensor: torch.Tensor, geometry: Geometry) -> None:
        self._geometry[id(tensor)] = (weakref.ref(tensor), geometry)

    def get(self, tensor: object) -> Geometry | None:
        item = self._geometry.get(id(tensor))
        return item[1] if item is not None and item[0]() is tensor else None

    def _inputs(self, args, kwargs) -> list[Geometry]:
        found = []
        stack = list(args) + list(kwargs.values())
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                g = self.get(item)
                if g is not None:
                    found.append(g)
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
        return found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        known = self._inputs(args, kwargs)
        if not known:
            return out
        local = [g for g in known if not g.pooled]  # a sum or product of a map and a global gate: the map's field
        widest = _widest(local) if local else replace(_widest(known), pooled=True)
        if local and len(local) < len(known):
            widest = replace(widest, context=True)
        first = self.get(args[0]) if args else None
        kind = _WINDOWED.get(func)
        if kind and first is not None and not first.pooled:
            widest = self._windowed(kind, first, args, kwargs)
        elif func in _MIXING:
            widest = replace(widest, field=(max(widest.field[0], self.side[0]), max(widest.field[1], self.side[1])), whole=True)
        elif local and (func in _ADAPTIVE or _summary(out, args)):  # pooling over every position: a global summary
            widest = replace(widest, field=(max(widest.field[0], self.side[0]), max(widest.field[1], self.side[1])), pooled=True)
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self._set(tensor, widest)
        return out

    @staticmethod
    def _windowed(kind: str, g: Geometry, args: tuple, kwargs: dict) -> Geometry:
        if kind == "conv":
            weight = _arg(args, kwargs, 1, "weight")
            k = tuple(weight.shape[-2:])
            s = _pair(_arg(args, kwargs, 3, "stride"), 1)
            d = _pair(_arg(args, kwargs, 5, "dilation"), 1)
        else:
            k = _pair(_arg(args, kwargs, 1, "kernel_size"), 1)
            s = _pair(_arg(args, kwargs, 2, "stride") or None, k)
            d = _pair(_arg(args, kwargs, 4, "dilation") if kind == "max" else None, 1)
        field = tuple(int(g.field[i] + (k[i] - 1) * d[i] * g.stride[i]) for i in range(2))
        return replace(g, stride=(g.stride[0] * s[0], g.stride[1] * s[1]), field=field)


def trace_geometry(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> dict[str, Geometry]:
    """The :class:`Geometry` of the first output of each module in ``names`` for one pass of ``x``
    (``Tensor[1,3,H,W]``); modules whose output carries none (it does not derive from the image) are left out.

    >>> import torchvision
    >>> geo = trace_geometry(torchvision.models.alexnet(), ["features.0", "features.2"], torch.zeros(1, 3, 224, 224))
    >>> geo["features.2"].stride, geo["features.2"].field
    ((8.0, 8.0), (19, 19))
    """
    tracer = _Tracer(x)
    found: dict[str, Geometry] = {}

    def on_output(name: str, _inputs: tuple, output) -> None:
        geometry = tracer.get(output)
        if name not in found and geometry is not None:
            found[name] = geometry

    with forward_hooks(model, names, on_output), torch.no_grad(), tracer:
        model(x)
    return found


def layer_geometry(loaded: LoadedModel, layers: tuple[LayerInfo, ...]) -> dict[str, Geometry]:
    """:func:`trace_geometry` of ``layers`` (callers pass every listed layer) of a loaded model, on zeros of its
    input size; computed once per loaded model and set of layers (kept on it)."""
    names = [layer.name for layer in layers]

    def compute() -> dict[str, Geometry]:
        x = torch.zeros(1, *loaded.input_size, device=loaded.device)
        with loaded.lock:
            return trace_geometry(loaded.model, names, x)

    key = xxhash.xxh3_64_hexdigest("\n".join(names).encode())  # another set of layers is another answer
    return loaded.memo(f"receptive.geometry.{key}", compute)


@dataclass(frozen=True)
class Stage:
    """The output of one stage of a network: ``layer`` (a listed layer's name) ends the run of layers
    at ``stride`` (4: a quarter of the input's resolution)."""

    stride: int
    layer: str


STAGE_STRIDES = (4, 8, 16, 32)  # what "comparable depth" means across architectures


def list_stages(loaded: LoadedModel, layers: tuple[LayerInfo, ...], declared: bool = True) -> tuple[Stage, ...]:
    """Each stage's output at the strides of :data:`STAGE_STRIDES` the network has, shallowest first.

    timm models declare their stages (``model.feature_info``: module and reduction); those are used
    when the declared module is a listed layer at the declared stride. Otherwise (torchvision, or a
    declaration that does not fit) the stages come from the traced geometry: at each stride, the layer
    that finishes last among those at that stride (a block's output, not a layer inside the next
    block's first branch, which still runs at the old stride before its strided convolution), the
    outermost of those that give the same tensor, and not a trunk that spans the whole network.
    Attention and global pooling have no stride (they see the whole input), so a ViT has no
    traced stages; its declared ones are used. ``declared=False`` ignores declarations (to check the
    trace against them).

    >>> from cnnviz.loading import load_model
    >>> from cnnviz.layers import list_layers
    >>> loaded = load_model("resnet18", "random")
    >>> [(s.stride, s.layer) for s in list_stages(loaded, list_layers(loaded))]
    [(4, 'layer1'), (8, 'layer2'), (16, 'layer3'), (32, 'layer4')]
    """

    def compute() -> tuple[Stage, ...]:
        geometry = layer_geometry(loaded, layers)
        found = _declared_stages(loaded.model, {layer.name for layer in layers}, geometry) if declared else ()
        return found or _traced_stages(layers, geometry)

    return loaded.memo(f"receptive.stages.{'declared' if declared else 'traced'}", compute)


def _stride(geometry: Geometry | None, layer: LayerInfo) -> int | None:
    """The layer's whole-number stride, the same along both axes; None for whole-input or 1×1 maps."""
    if geometry is None or geometry.whole or geometry.pooled or min(layer.shape[1:]) <= 1:
        return None
    sh, sw = geometry.stride
    return int(sh) if sh == sw and float(sh).is_integer() else None


def _declared_stages(model: torch.nn.Module, listed: set[str], geometry: dict[str, Geometry]) -> tuple[Stage, ...]:
    info = getattr(model, "feature_info", None)
    try:
        declared = [(int(f["reduction"]), str(f["module"])) for f in info] if info is not None else []
    except (TypeError, KeyError, ValueError):
        return ()
    stages = tuple(Stage(r, name) for r, name in declared if r in STAGE_STRIDES and name in listed)
    fits = all(geometry.get(s.layer) is None or geometry[s.layer].whole or geometry[s.layer].stride == (s.stride, s.stride)
               for s in stages)
    return stages if stages and fits else ()


def _traced_stages(layers: tuple[LayerInfo, ...], geometry: dict[str, Geometry]) -> tuple[Stage, ...]:
    order = {layer.name: i for i, layer in enumerate(layers)}
    stride = {layer.name: s for layer in layers if (s := _stride(geometry.get(layer.name), layer)) is not None}
    subtree = {n: [m for m in stride if m == n or m.startswith(n + ".")] for n in stride}
    end = {n: max(order[m] for m in subtree[n]) for n in stride}  # a block finishes with its last listed part
    spans = {n: len({stride[m] for m in subtree[n]}) for n in stride}

    def in_other_stage(name: str) -> bool:  # inside a block (not a trunk) whose output is at another stride
        parts = name.split(".")
        ancestors = (".".join(parts[:k]) for k in range(1, len(parts)))
        return any(a in stride and spans[a] <= 2 and stride[a] != stride[name] for a in ancestors)

    stages = []
    for s in STAGE_STRIDES:
        candidates = [n for n, v in stride.items() if v == s and not in_other_stage(n)]
        if not candidates:
            continue
        last = max(end[n] for n in candidates)
        tied = sorted((n for n in candidates if end[n] == last), key=lambda n: n.count("."))
        stages.append(Stage(s, next((n for n in tied if spans[n] <= 2), tied[-1])))
    return tuple(stages)


def field_box(geometry: Geometry, y: int, x: int, input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The input window (top, left, bottom, right; clipped to the input) that position (``y``, ``x``) of a map
    with this ``geometry`` sees: its receptive field centred on the position's centre in input pixels.
    A map that sees the whole input (attention, global pooling) gives the whole input.

    >>> field_box(Geometry(stride=(8.0, 8.0), field=(35, 35)), 2, 3, (224, 224))
    (2, 10, 37, 45)
    """
    h, w = input_size
    if geometry.whole or geometry.pooled:
        return 0, 0, h, w
    (sh, sw), (fh, fw) = geometry.stride, geometry.field
    cy, cx = (y + 0.5) * sh, (x + 0.5) * sw
    top, left = int(round(cy - fh / 2)), int(round(cx - fw / 2))
    return max(0, top), max(0, left), min(h, top + fh), min(w, left + fw)
