"""Convolution weights as the model actually uses them, ready to draw.

Two things make a convolution's ``.weight`` differ from what the model applies:

* weight-standardised convolutions (timm ``StdConv2d``) transform it inside ``forward``
  (:func:`effective_weight`);
* re-parameterisable blocks (RepVGG, MobileOne, FastViT stems: timm ``RepVggBlock``,
  ``MobileOneBlock``) run several convolutions on the same input and add them — a k×k conv + BN, a 1×1
  conv + BN, sometimes a BN on the input itself (identity) — so one of those convolutions is only a
  part. timm's own ``reparameterize()``, run on a copy of the block, fuses them into the one
  convolution the block is equivalent to in eval mode (BatchNorm folded with its running statistics,
  the 1×1 kernel padded to k×k, the identity as a centred delta) (:func:`conv_filters`).

Any convolution can be shown, not only the first: :func:`list_convolutions` lists them (depthwise and
grouped ones named as such), :func:`filter_planes` picks what to draw of a kernel (RGB, one input
channel's slice, or the mean over input channels), :func:`weight_histogram` and :func:`filter_norms`
describe the layer's weights (dead / near-zero filters flagged).
"""
from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import cache
from .errors import InvalidOptionError, UnknownLayerError, did_you_mean, quoted
from .layers import first_conv_name

if TYPE_CHECKING:
    from .loading import LoadedModel


class _Conv2dWeightRecorder(TorchFunctionMode):
    """Records the ``weight`` argument of every ``F.conv2d`` call made inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            self.weights.append(kwargs.get("weight", args[1] if len(args) > 1 else None))
        return func(*args, **kwargs)


def effective_weight(conv: torch.nn.Conv2d) -> torch.Tensor:
    """The kernel ``conv`` convolves with, as ``Tensor[O,I/groups,kh,kw]`` float32 on the CPU.

    For a plain ``Conv2d`` this is ``conv.weight``. Weight-standardised convolutions (timm
    ``StdConv2d``, ``ScaledStdConv2d``) transform ``.weight`` inside ``forward``; running the module
    once on a small input and recording the kernel passed to ``F.conv2d`` shows what it really uses.

    >>> effective_weight(torch.nn.Conv2d(3, 8, 3)).shape
    torch.Size([8, 3, 3, 3])
    """
    if _plain_forward(conv):  # nothing between .weight and F.conv2d: no probe pass needed
        return _cpu(conv.weight)
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    probe = torch.zeros(1, conv.in_channels, (kh - 1) * dh + 1, (kw - 1) * dw + 1, device=conv.weight.device, dtype=conv.weight.dtype)
    recorder = _Conv2dWeightRecorder()
    with torch.inference_mode(), recorder:
        conv(probe)
    return _cpu(recorder.weights[0] if recorder.weights else conv.weight)


def _plain_forward(conv: torch.nn.Conv2d) -> bool:
    """True when ``conv`` convolves with ``conv.weight`` as it is: torch's own ``forward`` and
    ``_conv_forward``, no pre-hooks (old-style ``weight_norm`` recomputes ``.weight`` in one)."""
    kind = type(conv)
    return (
        kind.forward is torch.nn.Conv2d.forward and kind._conv_forward is torch.nn.Conv2d._conv_forward
        and not conv._forward_pre_hooks and not torch.nn.modules.module._global_forward_pre_hooks
    )


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A float32 CPU copy of ``tensor`` (numpy's copy: a plain memcpy, where torch's may wait for
    its worker threads on a busy machine)."""
    if tensor is None:
        return None
    return torch.from_numpy(tensor.detach().to("cpu", torch.float32).numpy().copy())


@dataclass(frozen=True)
class Branch:
    """One of the parallel branches a re-parameterisable block adds up."""

    name: str  # qualified module name: "stem.conv_kxk.conv", "stages.0.1.identity"
    kind: str  # "3×3", "1×1" (the kernel), or "identity" (a BatchNorm on the block's input)
    weight: torch.Tensor | None  # [O,I,kh,kw] float32: the branch's own kernel, BN not folded; None for identity


@dataclass(frozen=True)
class Filters:
    """The filters one module applies to its input: ``conv2d(x, weight, bias, stride, padding)``.

    ``padding`` is the module's own: a pair, or ``"same"``/``"valid"``. timm's ``Conv2dSame`` (TF "same"
    padding, the offline model's stem) stores (0, 0) and pads its input asymmetrically in ``forward``."""

    layer: str  # qualified module name: the convolution, or the re-parameterisable block when fused
    module_type: str  # "Conv2d", "RepVggBlock"
    weight: torch.Tensor  # [O, I, kh, kw] float32, as used in the forward pass
    bias: torch.Tensor | None  # [O] float32 added after the convolution, or None
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    branches: tuple[Branch, ...]  # the parallel branches of a re-parameterisable block; () for a plain conv
    fused: bool  # True: weight/bias are the branches fused; False with branches: weight is one branch alone

    @property
    def description(self) -> str:
        """E.g. ``"Conv2d · 64 filters of 3×11×11, stride 4×4"``, saying when branches are fused."""
        o, i, kh, kw = self.weight.shape
        text = f"{self.module_type} · {o} filters of {i}×{kh}×{kw}, stride {self.stride[0]}×{self.stride[1]}"
        if not self.branches:
            return text
        counts = Counter(branch.kind for branch in self.branches)
        kinds = " + ".join(kind if n == 1 else f"{n}× {kind}" for kind, n in counts.items())
        if self.fused:
            return f"{text} · fused from {kinds} branches (re-parameterised, BatchNorm folded with its running statistics)"
        names = ", ".join(f"{branch.name} ({branch.kind})" for branch in self.branches)
        return f"{text} · one of the parallel branches {names}, shown alone: they could not be fused"


def _reparameterisable_block(model: torch.nn.Module, conv_name: str) -> str | None:
    """Qualified name of the nearest module above ``conv_name`` with timm's ``reparameterize()``."""
    parts = conv_name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        name = ".".join(parts[:depth])
        if callable(getattr(model.get_submodule(name), "reparameterize", None)):
            return name
    return None


def _branches(block: torch.nn.Module, block_name: str, children: list[str]) -> tuple[Branch, ...]:
    """The branches among ``block``'s ``children``: each convolution in them (by kernel), and each
    child with parameters but no convolution (a BatchNorm: the identity branch). Largest kernels
    first, identity last."""
    prefix = f"{block_name}." if block_name else ""
    found = []
    for child_name in children:
        child = block.get_submodule(child_name)
        convs = [(n, m) for n, m in child.named_modules() if isinstance(m, torch.nn.Conv2d)]
        for name, conv in convs:
            qualified = ".".join(filter(None, (prefix + child_name, name)))
            found.append(Branch(qualified, "×".join(map(str, conv.kernel_size)), effective_weight(conv)))
        if not convs and next(child.parameters(), None) is not None:
            found.append(Branch(prefix + child_name, "identity", None))
    return tuple(sorted(found, key=lambda b: (b.weight is None, 0 if b.weight is None else -b.weight.shape[-2:].numel())))


def _fused(block: torch.nn.Module) -> tuple[torch.nn.Conv2d, list[str]] | None:
    """timm's ``reparameterize()`` run on a deep copy of ``block`` (the live, shared model is left as it
    is): the one convolution it creates and the names of the children it replaced. None when the block
    is already re-parameterised (it creates nothing)."""
    twin = copy.deepcopy(block)
    with torch.no_grad():
        twin.reparameterize()
    live = dict(block.named_modules())
    created = [m for n, m in twin.named_modules() if n not in live and isinstance(m, torch.nn.Conv2d)]
    if not created:
        return None
    if len(created) > 1:
        raise ValueError(f"re-parameterising {type(block).__name__} created {len(created)} convolutions, not one")
    remaining = dict(twin.named_children())
    return created[0], [name for name, _ in block.named_children() if name not in remaining]


def _plain(name: str, conv: torch.nn.Conv2d, branches: tuple[Branch, ...] = ()) -> Filters:
    return Filters(
        name, type(conv).__name__, effective_weight(conv), _cpu(conv.bias), tuple(conv.stride), _padding(conv),
        branches, fused=False,
    )


def conv_filters(model: torch.nn.Module, name: str) -> Filters:
    """The filters the convolution ``name`` effectively applies, as ``Filters``.

    A plain convolution gives its own (effective) kernel. A convolution that is one branch of a
    re-parameterisable block gives the block's fused kernel and bias instead (``layer`` is then the
    block, ``fused`` is True, ``branches`` lists what was fused); where fusing fails, its own kernel,
    with every branch listed (``fused`` False). Fused figures match the block in eval mode only:
    BatchNorm is folded with its running statistics.

    >>> found = conv_filters(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2)), "0")
    >>> found.description, found.fused
    ('Conv2d · 8 filters of 3×5×5, stride 2×2', False)
    """
    conv = model.get_submodule(name)
    block_name = _reparameterisable_block(model, name)
    if block_name is None:
        return _plain(name, conv)
    block = model.get_submodule(block_name)
    try:
        fused = _fused(block)
    except Exception:  # noqa: BLE001 - any failure of the library's re-parameterisation: show the branches
        children = [n for n, _ in block.named_children()]
        return _plain(name, conv, _branches(block, block_name, children))
    if fused is None:  # already re-parameterised: this convolution is the whole block
        return _plain(name, conv)
    reparam, replaced = fused
    return Filters(
        block_name, type(block).__name__, effective_weight(reparam), _cpu(reparam.bias), tuple(reparam.stride),
        _padding(reparam), _branches(block, block_name, replaced), fused=True,
    )


def first_layer_filters(loaded: LoadedModel) -> Filters:
    """The filters of the model's first convolution (found generically, not ``features[0]``), fused
    with its parallel branches where the stem is re-parameterisable (see :func:`conv_filters`).

    >>> from cnnviz.loading import load_model
    >>> first_layer_filters(load_model("alexnet", weights="random")).weight.shape
    torch.Size([64, 3, 11, 11])
    """
    return conv_filters(loaded.model, first_conv_name(loaded.model))


def _padding(conv: torch.nn.Conv2d) -> tuple[int, int] | str:
    return conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)


# --- Any convolution: the list, one layer's kernels as planes, their histogram and per-filter norms ---

DEAD_RATIO = 1e-3  # a filter whose L2 norm is below this fraction of the layer's median norm is "near zero"
HISTOGRAM_BINS = 50


@dataclass(frozen=True)
class ConvInfo:
    """One ``Conv2d`` of a model, as the Filters tab lists it.

    ``sees_image``: the convolution takes the model's input image (the first convolution, and the
    parallel branches of a re-parameterisable stem), so its 3 input channels are R, G, B."""

    name: str  # qualified module name: "layer4.2.conv2"
    module_type: str  # "Conv2d", "StdConv2d", "Conv2dSame"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    sees_image: bool

    @property
    def depthwise(self) -> bool:
        """Each filter sees exactly one input channel (``groups == in_channels > 1``)."""
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def kind(self) -> str:
        """``"3×3"``, ``"depthwise 3×3"`` or ``"grouped 3×3, 32 groups"``.

        >>> ConvInfo("c", "Conv2d", 32, 32, (3, 3), (1, 1), 32, False).kind
        'depthwise 3×3'
        """
        kernel = "×".join(map(str, self.kernel_size))
        if self.depthwise:
            return f"depthwise {kernel}"
        if self.groups > 1:
            return f"grouped {kernel}, {self.groups} groups"
        return kernel

    @property
    def inputs_per_filter(self) -> int:
        """Input channels each filter sees: ``in_channels // groups`` (1 for depthwise)."""
        return self.in_channels // self.groups

    @property
    def label(self) -> str:
        """The dropdown label: ``"layer4.2.conv2 · 3×3 · 512→512, stride 1"``."""
        stride = "×".join(map(str, self.stride)) if self.stride[0] != self.stride[1] else str(self.stride[0])
        return f"{self.name} · {self.kind} · {self.in_channels}→{self.out_channels}, stride {stride}"


def list_convolutions(model: torch.nn.Module) -> tuple[ConvInfo, ...]:
    """Every ``Conv2d`` of ``model`` (subclasses included: weight-standardised, TF-"same"), in
    definition order (``named_modules()``, parents before children), which is the order of the forward
    pass for the sequential CNNs of torchvision and timm. Empty when the model has none.

    >>> [c.label for c in list_convolutions(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=8)))]
    ['0 · 3×3 · 3→8, stride 1', '1 · depthwise 3×3 · 8→8, stride 1']
    """
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        return ()
    first = first_conv_name(model)
    leading = True  # convolutions before the first one that does not take 3 channels: the stem's branches
    found = []
    for name, conv in convs:
        leading = leading and conv.in_channels == 3
        found.append(ConvInfo(
            name, type(conv).__name__, conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
            tuple(conv.stride), conv.groups, sees_image=conv.in_channels == 3 and (leading or name == first),
        ))
    return tuple(found)


def get_convolution(convs: tuple[ConvInfo, ...], name: str, model_name: str = "The model") -> ConvInfo:
    """The convolution called ``name`` among ``convs`` (from :func:`list_convolutions`).

    Raises:
        UnknownLayerError: no convolution has that name; the sentence suggests close names (or the
            convolutions inside ``name`` when it is a block) and says how many there are.
    """
    for conv in convs:
        if conv.name == name:
            return conv
    if not convs:
        raise UnknownLayerError(f"{model_name} has no 2-D convolution, so it has no filters to show.")
    names = [c.name for c in convs]
    inside = [n for n in names if n.startswith(f"{name}.")] if name else []
    if inside:
        shown = ", ".join(inside[:5]) + (" …" if len(inside) > 5 else "")
        hint = f" {quoted(name)} is a block; its convolutions: {shown}."
    else:
        hint = did_you_mean(name, names)
    raise UnknownLayerError(
        f"{model_name} has no convolution {quoted(name)}.{hint} Its {len(names)} convolutions run from "
        f"{names[0]} to {names[-1]}, as the Convolution list names them."
    )


def filter_planes(weight: torch.Tensor, input_channel: int | None, colour: bool) -> np.ndarray:
    """What to draw of ``weight`` (``Tensor[O,I,kh,kw]`` float32): ``float32[O,c,kh,kw]`` with c = 3
    (``colour``, ``input_channel`` None and I == 3: the R, G, B slices) or c = 1 (one input channel's
    slice, or the mean over the I input channels).

    Raises:
        InvalidOptionError: ``input_channel`` is not a whole number from 0 to I − 1 (or None).

    >>> filter_planes(torch.ones(4, 6, 3, 3), 2, colour=False).shape
    (4, 1, 3, 3)
    """
    w = weight.numpy()
    check_input_channel(input_channel, w.shape[1])
    if input_channel is None:
        # summed in float64: the mean of finite float32 weights is finite, their float32 sum may not be
        return w if colour and w.shape[1] == 3 else w.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    return w[:, input_channel : input_channel + 1]


def check_input_channel(input_channel: object, count: int) -> None:
    """Raise unless ``input_channel`` is None or a whole number from 0 to ``count`` − 1.

    Raises:
        InvalidOptionError: the sentence says which input channels each filter of the layer has.
    """
    if input_channel is None:
        return
    if isinstance(input_channel, bool) or not isinstance(input_channel, (int, np.integer)) or not 0 <= input_channel < count:
        valid = "0 (each filter has one input channel)" if count == 1 else f"a whole number from 0 to {count - 1}"
        raise InvalidOptionError(
            f"Input channel must be {valid} for this layer, or -1 for all input channels together; "
            f"not {quoted(input_channel)}."
        )


@dataclass(frozen=True)
class Histogram:
    """Counts of a layer's finite weights in equal-width bins (``np.histogram``)."""

    counts: np.ndarray  # int64[bins]: how many weights fall in each bin; sums to the number of finite weights
    edges: np.ndarray  # float[bins + 1]: bin edges, from the smallest finite weight to the largest
    non_finite: int = 0  # NaN and infinite weights, left out of the bins (they have no place on the axis)

    @property
    def centres(self) -> np.ndarray:
        """float64[bins]: the middle of each bin."""
        return (self.edges[:-1].astype(np.float64) + self.edges[1:]) / 2


_FLOAT32 = np.finfo(np.float32)


def _float64_range(values: np.ndarray, bins: int) -> tuple[np.float64, np.float64] | None:
    """The range to bin ``values`` (finite float32) over in float64, where numpy's float32 bins would fail:
    a span past float32's largest number (±3e38), or bins narrower than float32 tells apart at this
    magnitude (a layer of one value, 1e8: numpy bins it over 1e8 ± 0.5). None: numpy's own bins work."""
    if not values.size:
        return None
    lo, hi = np.float64(values.min()), np.float64(values.max())
    if lo == hi:  # numpy's rule for a constant, ± 0.5, widened where even float64 cannot add 0.5 (3e38)
        pad = max(0.5, 1e-12 * abs(lo))
        lo, hi = lo - pad, hi + pad
    narrow = (hi - lo) / bins < 4 * float(_FLOAT32.eps) * max(abs(lo), abs(hi))
    return (lo, hi) if narrow or hi - lo > float(_FLOAT32.max) / 2 else None


def weight_histogram(weight: torch.Tensor, bins: int = HISTOGRAM_BINS) -> Histogram:
    """Histogram of every finite value of ``weight`` (``Tensor[O,I,kh,kw]`` float32), ``bins`` equal bins
    (numpy's, in float32; in float64 where float32 cannot space them); NaN and infinite values are counted
    apart (:attr:`Histogram.non_finite`).

    >>> weight_histogram(torch.tensor([0.0, 1.0, 1.0, 2.0]), bins=2).counts.tolist()
    [1, 3]
    >>> weight_histogram(torch.tensor([-3e38, 3e38, float("nan")]), bins=2).counts.tolist()
    [1, 1]
    """
    values = weight.numpy().ravel()
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    # float64 ends make numpy bin in float64, a block of values at a time (no float64 copy of the layer)
    counts, edges = np.histogram(values, bins=bins, range=_float64_range(values, bins))
    return Histogram(counts, edges, int(finite.size - finite.sum()))


@dataclass(frozen=True)
class FilterNorms:
    """Per-filter L2 norms of a layer, with the dead (all zero) and near-zero filters flagged."""

    norms: np.ndarray  # float64[O]: ‖weight[o]‖₂ over its I×kh×kw values (float32 ones may square past float32)
    median: float  # the median of the finite ``norms`` (0 when none is)
    threshold: float  # DEAD_RATIO × median: a norm below this (or exactly zero) is flagged
    flagged: np.ndarray  # int64[k]: indices of the flagged filters, ascending

    @property
    def zero(self) -> np.ndarray:
        """int64[j]: indices of the filters whose weights are all exactly zero (a subset of ``flagged``)."""
        return np.flatnonzero(self.norms == 0)


def filter_norms(weight: torch.Tensor, ratio: float = DEAD_RATIO) -> FilterNorms:
    """L2 norm of each filter ``weight[o]`` (``Tensor[O,I,kh,kw]`` float32), in float64 so that weights of
    any finite size have one; filters whose norm is zero or below ``ratio`` × the median norm are flagged
    as dead / near zero.

    >>> w = torch.ones(3, 1, 2, 2); w[1] = 0
    >>> filter_norms(w).flagged.tolist()
    [1]
    """
    flat = weight.numpy().reshape(weight.shape[0], -1)
    # summed in float64 (cast chunk by chunk, no copy of the layer): squares of 1e20 overflow float32
    norms = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
    finite = norms[np.isfinite(norms)]
    median = float(np.median(finite)) if finite.size else 0.0
    threshold = ratio * median
    flagged = np.flatnonzero((norms == 0) | (norms < threshold))
    return FilterNorms(norms, median, threshold, flagged)


# --------------------------------------------------------------------------------------------------
# Per model: its convolutions, and each layer's filters, histogram and norms, computed once
# --------------------------------------------------------------------------------------------------

FILTERS_CACHE_BYTES = cache.megabytes(os.environ.get("CNNVIZ_FILTERS_MB"), 64)  # per model


def convolutions(loaded: LoadedModel) -> tuple[ConvInfo, ...]:
    """:func:`list_convolutions` of a loaded model, computed once (kept with the model)."""
    return loaded.memo("filters.convolutions", lambda: list_convolutions(loaded.model))


def filter_cache(loaded: LoadedModel) -> cache.Store:
    """The model's cache of analysed layers and drawn grids, :data:`FILTERS_CACHE_BYTES` at most (weights
    ``4·O·I·kh·kw`` bytes, grids ``H·W·3``). Filters of a loaded model never change (it is read-only), so
    entries need no invalidation; the whole cache goes with the model."""
    return loaded.memo("filters.cache", lambda: cache.Store("filters", FILTERS_CACHE_BYTES))


def analysed(loaded: LoadedModel, name: str) -> tuple[Filters, Histogram, FilterNorms]:
    """The filters of convolution ``name`` with their weight histogram and per-filter norms (cached)."""
    store = filter_cache(loaded)
    found = store.get(("layer", name))
    if found is None:
        with loaded.lock:  # may run the convolution once: keep it out of another request's hooked pass
            filters = conv_filters(loaded.model, name)
        found = store.put(("layer", name), (filters, weight_histogram(filters.weight), filter_norms(filters.weight)),
                          filters.weight.nbytes)
    return found
