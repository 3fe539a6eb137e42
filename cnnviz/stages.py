"""Stage comparison: the first convolution and the output of each stage, matched by stride (1/4 … 1/32 of the
input, see :func:`cnnviz.receptive.list_stages`), drawn the same way for any model, so two models line up
row by row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import activations, layers, receptive, render
from .activations import Prediction

if TYPE_CHECKING:
    from .loading import LoadedModel

TILES = 16  # channels per stage grid: the 16 strongest by mean, the same count on both sides
FIRST = "first convolution"
STRIDES = receptive.STAGE_STRIDES  # the strides compared: 1/4 … 1/32 of the input


@dataclass(frozen=True)
class StageRow:
    title: str  # "first convolution", "stride 8 (1/8 of the input)"
    grid: np.ndarray  # uint8[H,W,3]: the 16 strongest channels, a colour bar below
    caption: str  # names the layer: "layer2 · Sequential · 128×28×28"


def stride_title(stride: int) -> str:
    return f"stride {stride} (1/{stride} of the input)"


def titles() -> list[str]:
    """Every row title in order: the first convolution, then each stride."""
    return [FIRST] + [stride_title(s) for s in STRIDES]


def stage_rows(loaded: LoadedModel, x: torch.Tensor, digest: bytes) -> tuple[dict[str, StageRow], tuple[Prediction, ...]]:
    """Row title -> row for the first convolution and each stage of ``loaded`` on input ``x`` (whose digest
    is ``digest``), and the top-5: one pass for whatever is not kept already (the maps it captures are kept
    for the Feature maps view too).

    >>> from cnnviz import loading, preprocess
    >>> loaded = loading.load_model("resnet18", "random")
    >>> found = preprocess.model_input(loaded, "examples/coffee.png")
    >>> rows, top = stage_rows(loaded, found.x, found.digest)
    >>> list(rows)[:2], rows[FIRST].caption
    (['first convolution', 'stride 4 (1/4 of the input)'], 'conv1 · Conv2d · 64×112×112')
    """
    found = layers.list_layers(loaded)
    wanted = {FIRST: layers.get_layer(loaded, None)}
    by_name = {info.name: info for info in found}
    for stage in receptive.list_stages(loaded, found):
        wanted[stride_title(stage.stride)] = by_name[stage.layer]
    known = activations.kept_predictions(loaded, digest)
    maps = {info.name: activations.KEPT.get(loaded, digest, info.name, copy=False) for info in wanted.values()}
    missing = [info for info in dict.fromkeys(wanted.values()) if maps[info.name] is None]
    if missing or known is None:
        store, known = activations.capture_kept(loaded, x, digest, missing, known)
        maps.update(store)
    rows = {}
    for title, info in wanted.items():
        layer_maps = maps[info.name]
        chosen = activations.select_channels(layer_maps, "top", TILES)
        grid, _layout, _drawn_with = render.draw_feature_grid(
            layer_maps.numpy(), chosen.tolist(), "auto", "channel", (float(layer_maps.min()), float(layer_maps.max())))
        c, h, w = info.shape
        rows[title] = StageRow(title, grid, f"{info.name} · {info.type} · {c}×{h}×{w}")
    return rows, known
