"""Per-layer table rows and totals for a model: the Architecture tab's data.

torchinfo 1.8.0 gives the layer tree (which modules ran, in forward order, at which depth), each
layer's parameter count and the memory totals. Its mult-adds, though, only see the weights of leaf
modules and miss functional ops (0.32 G instead of 4.5 G for timm convnext_tiny), so MACs are counted
at the op level by ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2) during the same,
single forward pass. Torch has no formula for some fused attention kernels (CPU
``scaled_dot_product_attention``, the fused op of ``nn.MultiheadAttention``'s inference fast path),
so they get theirs here, counted like the matrix products they replace. Each call of each module
gets the MACs counted between its entry and its exit, so a module that runs several times
(torchvision ResNet's ``relu``) gets one row per call with that call's own figures, and the totals
come from the global count, never from summing rows.

>>> import torch
>>> s = summarize(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), (3, 8, 8))
>>> s.rows[0].name, s.rows[0].output_shape, s.total_macs
('0', (8, 6, 6), 7776)
"""
from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchinfo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torch.utils.hooks import RemovableHandle
from torchinfo.torchinfo import clear_cached_forward_pass

from .cancel import Stopped
from .errors import InvalidOptionError, shape_text
from .hooks import eval_mode

__all__ = ["LayerRow", "Summary", "summarize"]

CSV_HEADER = ("name", "type", "depth", "output_shape", "kernel", "stride", "params", "macs")
_TEXT_HEADER = ("Layer (type)", "Output shape", "Kernel", "Stride", "Params", "MACs")
_RIGHT_ALIGNED = (False, False, False, False, True, True)
_COLUMN_GAP = "   "


@dataclass(frozen=True)
class LayerRow:
    """One call of one module during the summary's forward pass.

    ``params`` and ``macs`` include the module's children (torchinfo semantics). A module that runs
    more than once has one row per call; each row shows that call's output shape and MACs and the
    module's full parameter count, so add up the ``Summary`` totals, not the rows.

    >>> LayerRow("conv1", "Conv2d", 1, (64, 112, 112), "7×7", "2×2", 9408, 118013952).kernel
    '7×7'
    """

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...]
    kernel: str
    stride: str
    params: int
    macs: int


@dataclass(frozen=True)
class Summary:
    """Layer rows of a model plus its totals, for one image of ``input_size`` (C, H, W).

    >>> import torch
    >>> s = summarize(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)), (3, 2, 2))
    >>> s.total_params, s.total_macs
    (26, 24)
    """

    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    total_macs: int
    input_size: tuple[int, int, int]
    input_mb: float
    forward_backward_mb: float
    params_mb: float
    total_mb: float

    def to_text(self) -> str:
        """A torchinfo-style text table: header, rows indented by depth, totals block.

        >>> import torch
        >>> text = summarize(torch.nn.Sequential(torch.nn.ReLU()), (1, 2, 2)).to_text()
        >>> print(text.splitlines()[5])
        ├─0 (ReLU)     1×2×2                                --     --
        """
        cells = [_TEXT_HEADER, *(_text_cells(row, prefix) for row, prefix in _tree_prefixes(self.rows))]
        widths = [max(len(line[i]) for line in cells) for i in range(len(_TEXT_HEADER))]
        lines = [_join_cells(line, widths) for line in cells]
        divider = "=" * max(len(line) for line in lines)
        return "\n".join(
            [
                divider,
                f"Input: {shape_text(self.input_size)} (C×H×W), batch of 1",
                divider,
                lines[0],
                divider,
                *lines[1:],
                divider,
                *self._totals_lines(),
                divider,
                *self._memory_lines(),
                divider,
            ]
        )

    def to_csv(self) -> str:
        """The rows as CSV with header ``name,type,depth,output_shape,kernel,stride,params,macs``.

        ``output_shape`` is written as ``64×56×56`` ("" when the output is not a tensor).

        >>> import torch
        >>> print(summarize(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), (1, 4, 4)).to_csv())
        name,type,depth,output_shape,kernel,stride,params,macs
        0,Conv2d,1,2×2×2,3×3,1×1,20,72
        <BLANKLINE>
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for row in self.rows:
            writer.writerow(
                [row.name, row.type, row.depth, "×".join(map(str, row.output_shape)),
                 row.kernel, row.stride, row.params, row.macs]
            )
        return buffer.getvalue()

    def _totals_lines(self) -> list[str]:
        unit, value = readable_macs(self.total_macs)
        return [
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Total mult-adds ({unit}): {value:0.2f}",
        ]

    def _memory_lines(self) -> list[str]:
        return [
            f"Input size (MB): {self.input_mb:0.2f}",
            f"Forward/backward pass size (MB): {self.forward_backward_mb:0.2f}",
            f"Params size (MB): {self.params_mb:0.2f}",
            f"Estimated Total Size (MB): {self.total_mb:0.2f}",
        ]


def summarize(model: nn.Module, input_size: tuple[int, int, int], depth: int = 3) -> Summary:
    """Summarise ``model`` for one image of ``input_size`` (C, H, W), rows down to ``depth``.

    Runs one forward pass in eval mode without gradients, on the device and in the floating dtype
    of the model's parameters, with random input. The model's training flags (per module) are
    restored afterwards and no hooks are left behind. Raises ``InvalidOptionError`` when the
    arguments are out of range or the model cannot run on that input size.

    >>> import torchvision
    >>> s = summarize(torchvision.models.get_model("resnet18", weights=None), (3, 224, 224), depth=1)
    >>> [r.name for r in s.rows][:3], round(s.total_macs / 1e9, 2)
    (['conv1', 'bn1', 'relu'], 1.81)
    """
    size = _check_arguments(input_size, depth)
    example = _example_input(model, size)
    with eval_mode(model), torch.inference_mode():
        stats, calls = _forward_with_counts(model, example, size)
    rows = tuple(_rows(model, stats.summary_list, calls, depth))
    return Summary(
        rows=rows,
        total_params=stats.total_params,
        trainable_params=stats.trainable_params,
        non_trainable_params=stats.total_params - stats.trainable_params,
        total_macs=calls.total_macs,
        input_size=size,
        input_mb=stats.total_input / 1e6,
        forward_backward_mb=stats.total_output_bytes / 1e6,
        params_mb=stats.total_param_bytes / 1e6,
        total_mb=(stats.total_input + stats.total_output_bytes + stats.total_param_bytes) / 1e6,
    )


# --- the forward pass ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """What one call of a module did: MACs between its entry and exit, and its output's shape."""

    macs: int
    output_shape: tuple[int, ...]


class _CallRecorder:
    """Forward hooks on every module of a model that record each call as a ``_Call``.

    MACs of a call are the growth of the counter's global FLOP count between the module's pre-hook
    and its hook, halved; children's ops fall inside that window, so they are included.
    """

    def __init__(self, model: nn.Module, counter: FlopCounterMode) -> None:
        self.calls: dict[int, list[_Call]] = {}
        self.total_macs = 0
        self._model = model
        self._counter = counter
        self._open: dict[int, list[int]] = {}
        self._stack: list[nn.Module] = []
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> _CallRecorder:
        for module in self._model.modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # ScriptModules take no Python hooks; their children still do
            self._handles.append(module.register_forward_pre_hook(self._enter_call))
            self._handles.append(module.register_forward_hook(self._exit_call))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.total_macs = self._counter.get_total_flops() // 2

    def module_macs(self, module: nn.Module) -> int:
        """MACs of all calls of ``module``; for one that never ran (a ModuleList), its children's."""
        if id(module) in self.calls:
            return sum(call.macs for call in self.calls[id(module)])
        return sum(self.module_macs(child) for child in module.children())

    def innermost_open_layer(self) -> str:
        """Qualified name of the innermost module entered and not left ("" for none or the model).

        After a failed forward pass, that is the layer which raised.
        """
        if not self._stack:
            return ""
        return next(name for name, module in self._model.named_modules() if module is self._stack[-1])

    def _enter_call(self, module: nn.Module, args: Any) -> None:
        self._open.setdefault(id(module), []).append(self._counter.get_total_flops())
        self._stack.append(module)

    def _exit_call(self, module: nn.Module, args: Any, output: Any) -> None:
        while self._stack and self._stack.pop() is not module:
            pass  # a child whose exception its parent caught never reached its own exit
        flops = self._counter.get_total_flops() - self._open[id(module)].pop()
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        self.calls.setdefault(id(module), []).append(_Call(flops // 2, shape))


def _forward_with_counts(
    model: nn.Module, example: torch.Tensor, size: tuple[int, int, int]
) -> tuple[torchinfo.ModelStatistics, _CallRecorder]:
    """torchinfo's forward pass with op-level FLOP counting and per-call recording around it."""
    counter = _GlobalFlopCounter()
    calls = _CallRecorder(model, counter)
    try:
        with counter, calls:
            stats = torchinfo.summary(model, input_data=example, verbose=0, mode="eval")
    except RuntimeError as e:
        if isinstance(e.__cause__, Stopped):  # torchinfo wraps what the forward pass raised
            raise e.__cause__ from None
        raise InvalidOptionError(_failure_message(model, size, calls, e.__cause__ or e)) from e
    finally:
        clear_cached_forward_pass()  # torchinfo 1.8 caches every summary list (and so the model)
    return stats, calls


def _failure_message(
    model: nn.Module, size: tuple[int, int, int], calls: _CallRecorder, cause: BaseException
) -> str:
    """What failed, where, and the model's own input size when it differs from ``size``."""
    layer = calls.innermost_open_layer()
    where = f" in layer {layer}" if layer else ""
    message = (
        f"{type(model).__name__} could not run on a {shape_text(size)} input: "
        f"{type(cause).__name__}{where}: {str(cause).rstrip('. ')}."
    )
    own_size = _own_input_size(model)
    if own_size is not None and own_size != size:
        message += f" Its own input size is {shape_text(own_size)}."
    return message


def _own_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """The (C, H, W) a timm model was configured for (``pretrained_cfg``), else None."""
    config = getattr(model, "pretrained_cfg", None)
    size = config.get("input_size") if isinstance(config, dict) else None
    return tuple(size) if size is not None and len(size) == 3 else None


# --- attention MACs --------------------------------------------------------------------------


def _fused_sdpa_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """A fused ``scaled_dot_product_attention`` kernel: Q·Kᵀ and weights·V, torch's own formula.

    Shapes are (batch, heads, tokens, channels); grouped key/value heads are allowed.
    """
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha_flops(
    query_shape: torch.Size,
    key_shape: torch.Size,
    value_shape: torch.Size,
    embed_dim: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    """``nn.MultiheadAttention``'s fused path, one op: q/k/v projections, attention, output projection.

    Query is (batch, Lq, E), key and value (batch, Lk, E). Biases are not counted (as for
    ``addmm``); FLOPs are 2 × MACs.
    """
    *batch, query_len, _ = query_shape
    key_len = key_shape[-2]
    projections = (2 * query_len + 2 * key_len) * embed_dim * embed_dim  # q and output; k and v
    attention = 2 * query_len * key_len * embed_dim  # Q·Kᵀ and weights·V, summed over heads
    return 2 * math.prod(batch) * (projections + attention)


_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _fused_sdpa_flops,
    torch.ops.aten._scaled_dot_product_attention_math_for_mps: _fused_sdpa_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}
"""FLOP formulas for attention kernels that torch 2.14 counts as 0; its CUDA kernels have their own."""


class _GlobalFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` with attention formulas and only the global count, which is all we read.

    Its per-module attribution comes from a ``ModuleTracker`` that hooks every module of every
    thread and registers gradient hooks on module inputs that require grad; one that has no graph
    (a parameter's view made without gradients, like timm PiT's class token passed on to the next
    stage) makes it raise. ``_CallRecorder`` attributes MACs to modules instead.
    """

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=_ATTENTION_FLOPS)
        self.mod_tracker = _GlobalOnly()


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: every count goes to "Global" only."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def _example_input(model: nn.Module, size: tuple[int, int, int]) -> torch.Tensor:
    """Random Tensor[1,C,H,W] on the device, and in the floating dtype, of the model's weights."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return torch.rand((1, *size), device=device, dtype=dtype)


def _check_arguments(input_size: Sequence[int], depth: int) -> tuple[int, int, int]:
    """``input_size`` as a (C, H, W) tuple of positive ints; raise on it or on ``depth`` < 1."""
    if len(input_size) != 3 or not all(isinstance(n, numbers.Integral) and n > 0 for n in input_size):
        raise InvalidOptionError(
            f"Input size must be three positive integers (channels, height, width), got {input_size!r}."
        )
    if depth < 1:
        raise InvalidOptionError(f"Depth must be 1 or more (1 = the model's direct children), got {depth}.")
    channels, height, width = (int(n) for n in input_size)
    return channels, height, width


# --- rows ------------------------------------------------------------------------------------


def _rows(
    model: nn.Module, infos: list[Any], calls: _CallRecorder, depth: int
) -> Iterator[LayerRow]:
    """One ``LayerRow`` per torchinfo layer down to ``depth``, the model itself left out.

    The k-th executed torchinfo layer of a module is that module's k-th call: both are recorded by
    hooks in call order.
    """
    names = {id(module): name for name, module in model.named_modules()}
    calls_seen: dict[int, int] = {}
    for info in infos:
        name = names.get(info.layer_id, "")
        call = _next_call(info, calls, calls_seen) if info.executed else None
        if not name or name.count(".") + 1 > depth:
            continue
        yield _row(name, info, call, calls)


def _next_call(info: Any, calls: _CallRecorder, calls_seen: dict[int, int]) -> _Call | None:
    """The recorded call matching this executed torchinfo layer, if the recorder saw it."""
    index = calls_seen.get(info.layer_id, 0)
    calls_seen[info.layer_id] = index + 1
    recorded = calls.calls.get(info.layer_id, [])
    return recorded[index] if index < len(recorded) else None


def _row(name: str, info: Any, call: _Call | None, calls: _CallRecorder) -> LayerRow:
    module = info.module
    shape = call.output_shape if call is not None else ()
    spatial_dims = len(shape) - 1 if len(shape) >= 2 else 2
    kernel = _format_window(getattr(module, "kernel_size", None), spatial_dims)
    return LayerRow(
        name=name,
        type=type(module).__name__,
        depth=name.count(".") + 1,
        output_shape=shape,
        kernel=kernel,
        stride=_format_window(getattr(module, "stride", None), spatial_dims) if kernel else "",
        params=max(info.num_params, 0),
        macs=call.macs if call is not None else calls.module_macs(module),
    )


def _format_window(value: object, spatial_dims: int) -> str:
    """``3`` or ``(3, 3)`` as ``"3×3"``; anything that is not an int or a tuple of ints as ``""``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * spatial_dims
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value):
        return "×".join(map(str, value))
    return ""


# --- text ------------------------------------------------------------------------------------


def _tree_prefixes(rows: Sequence[LayerRow]) -> Iterator[tuple[LayerRow, str]]:
    """Each row with torchinfo's tree prefix: ``├─`` at depth 1, ``│    └─`` at depth 2, …"""
    for row in rows:
        yield row, "├─" if row.depth == 1 else "│    " * (row.depth - 1) + "└─"


def _text_cells(row: LayerRow, prefix: str) -> tuple[str, ...]:
    short_name = row.name.rsplit(".", 1)[-1]
    return (
        f"{prefix}{short_name} ({row.type})",
        shape_text(row.output_shape) if row.output_shape else "--",
        row.kernel,
        row.stride,
        f"{row.params:,}" if row.params else "--",
        f"{row.macs:,}" if row.macs else "--",
    )


def _join_cells(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = (
        cell.rjust(width) if right else cell.ljust(width)
        for cell, width, right in zip(cells, widths, _RIGHT_ALIGNED)
    )
    return _COLUMN_GAP.join(padded).rstrip()


def readable_macs(macs: int) -> tuple[str, float]:
    """torchinfo's units: G from 1e9, T from 1e12, else M.

    >>> readable_macs(4_089_184_256)
    ('G', 4.089184256)
    """
    if macs >= 1e12:
        return "T", macs / 1e12
    if macs >= 1e9:
        return "G", macs / 1e9
    return "M", macs / 1e6
