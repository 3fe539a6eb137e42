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
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .layers import first_conv_name

if TYPE_CHECKING:
    from .registry import LoadedModel


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
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    probe = torch.zeros(1, conv.in_channels, (kh - 1) * dh + 1, (kw - 1) * dw + 1, device=conv.weight.device, dtype=conv.weight.dtype)
    recorder = _Conv2dWeightRecorder()
    with torch.inference_mode(), recorder:
        conv(probe)
    weight = recorder.weights[0] if recorder.weights else conv.weight
    return weight.detach().to("cpu", torch.float32, copy=True)


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to("cpu", torch.float32, copy=True)


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

    >>> from cnnviz.registry import load_model
    >>> first_layer_filters(load_model("alexnet", weights="random")).weight.shape
    torch.Size([64, 3, 11, 11])
    """
    return conv_filters(loaded.model, first_conv_name(loaded.model))


def _padding(conv: torch.nn.Conv2d) -> tuple[int, int] | str:
    return conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
