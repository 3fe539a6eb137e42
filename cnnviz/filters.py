"""Convolution weights as the model actually uses them, ready to draw."""
from __future__ import annotations

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


@dataclass(frozen=True)
class Filters:
    layer: str  # qualified module name
    module_type: str
    weight: torch.Tensor  # [O, I, kh, kw] float32, as used in the forward pass
    stride: tuple[int, int]

    @property
    def description(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{self.module_type} · {o} filters of {i}×{kh}×{kw}, stride {self.stride[0]}×{self.stride[1]}"


def first_layer_filters(loaded: LoadedModel) -> Filters:
    """The filters of the model's first convolution (found generically, not ``features[0]``).

    >>> first_layer_filters(load_model("alexnet", weights="random")).weight.shape
    torch.Size([64, 3, 11, 11])
    """
    name = first_conv_name(loaded.model)
    conv = loaded.model.get_submodule(name)
    return Filters(name, type(conv).__name__, effective_weight(conv), tuple(conv.stride))
