"""Pure array code: normalise, colour with a lookup table, tile into a grid. No models, no gradio.

Contracts: inputs are numpy arrays and are never mutated; "unit" arrays are float32 in [0, 1];
outputs are ``uint8[H,W,3]`` RGB images.
"""
from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image

EPS = 1e-8
COLORMAPS = ("gray", "viridis", "magma", "inferno", "cividis", "coolwarm")
NORMALISATIONS = ("channel", "layer")  # feature maps: per channel or over the whole layer
FILTER_NORMALISATIONS = ("layer", "filter")  # filters: over the whole layer (the seed's) or per filter
MAX_GRID_SIDE = 2048  # longest side of any grid sent to the browser, in pixels
MAPS_TARGET = 512  # feature-map grids: native resolution, enlarged by whole factors only below ~512 px
FILTERS_TARGET = 1024  # filter grids: kernels are tiny, so each weight becomes a visible square


def minmax(a: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Scale to float32 [0, 1] by min and max over ``axes`` (all axes when None). Constant input → 0.

    >>> minmax(np.array([2.0, 4.0, 6.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    a = np.asarray(a, dtype=np.float32)
    lo = a.min(axis=axes, keepdims=True)
    hi = a.max(axis=axes, keepdims=True)
    return (a - lo) / np.maximum(hi - lo, EPS)


@functools.cache
def lut(name: str) -> np.ndarray:
    """A 256-entry colour lookup table ``uint8[256,3]`` for a matplotlib colormap name (computed once)."""
    if name not in COLORMAPS:
        raise ValueError(f"Unknown colormap {name!r}; use one of {', '.join(COLORMAPS)}.")
    if name == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp, ramp, ramp], axis=1)
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def colorize(unit: np.ndarray, colormap: str = "gray") -> np.ndarray:
    """Map a unit array ``float32[...]`` to ``uint8[..., 3]`` through the colormap's LUT."""
    index = np.clip(np.rint(np.asarray(unit) * 255.0), 0, 255).astype(np.uint8)
    return np.take(lut(colormap), index, axis=0)


def tile(images: np.ndarray, cols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Lay ``uint8[N,h,w,3]`` tiles out row by row in a grid with ``pad`` pixels between them.

    ``cols`` defaults to a near-square grid (8 columns for 64 tiles, like the seed's 8×8).

    >>> tile(np.zeros((4, 2, 2, 3), np.uint8), pad=1).shape
    (5, 5, 3)
    """
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = r * (h + pad), q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def resize_tiles(images: np.ndarray, size: int) -> np.ndarray:
    """Resize tiles ``[N,h,w,...]`` (any ``h, w >= 1``, square or not) so the longer side is about
    ``size``: nearest-neighbour up by a whole factor (every pixel stays a crisp block), or block-average
    down by a whole step, where a side shorter than the step is averaged whole into one pixel.

    >>> resize_tiles(np.ones((2, 1, 401), np.float32), 100).shape
    (2, 1, 80)
    """
    h, w = images.shape[1:3]
    longest = max(h, w)
    if size >= longest:
        factor = max(1, size // longest)
        return images.repeat(factor, axis=1).repeat(factor, axis=2)
    step = math.ceil(longest / max(size, 1))
    step_h, step_w = min(step, h), min(step, w)
    hh, ww = (h // step_h) * step_h, (w // step_w) * step_w  # drop the last partial block
    cropped = images[:, :hh, :ww].astype(np.float32)
    shape = (images.shape[0], hh // step_h, step_h, ww // step_w, step_w) + images.shape[3:]
    return cropped.reshape(shape).mean(axis=(2, 4)).astype(images.dtype)


def tile_size(n: int, side: int, target: int = 1024, max_side: int = MAX_GRID_SIDE) -> int:
    """Pixel size for each of ``n`` tiles of native size ``side``: about ``target`` px for the grid,
    at least the native size when that still fits ``max_side``, and never bigger than 128 px per tile."""
    cols = math.ceil(math.sqrt(n))
    wanted = min(128, max(side, target // cols))
    return max(1, min(wanted, max_side // cols - 2))


def render_feature_maps(
    maps: np.ndarray,
    colormap: str = "gray",
    normalise: str = "channel",
    target: int = MAPS_TARGET,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Draw feature maps ``float32[C,H,W]`` as a near-square grid, ``uint8[H',W',3]``.

    ``normalise="channel"`` stretches each map to its own range; ``"layer"`` uses one range for all,
    so brightness is comparable between channels: ``value_range`` (the whole layer's min and max when
    only some channels are drawn), else the range of ``maps``.

    >>> render_feature_maps(np.random.rand(64, 55, 55).astype(np.float32)).shape[2]
    3
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"Unknown normalisation {normalise!r}; use one of {', '.join(NORMALISATIONS)}.")
    if normalise == "layer" and value_range is not None:
        lo, hi = value_range
        unit = np.clip((np.asarray(maps, dtype=np.float32) - lo) / max(hi - lo, EPS), 0.0, 1.0)
    else:
        unit = minmax(maps, (1, 2) if normalise == "channel" else None)
    size = tile_size(len(maps), max(maps.shape[1:]), target)
    if size < max(maps.shape[1:]):  # shrink the values, then colour
        return tile(colorize(resize_tiles(unit, size), colormap))
    return tile(resize_tiles(colorize(unit, colormap), size))  # colour the few native pixels, then enlarge


def render_filters(weight: np.ndarray, normalise: str = "layer", target: int = FILTERS_TARGET) -> np.ndarray:
    """Draw conv kernels ``float32[O,I,kh,kw]`` as a grid, ``uint8[H,W,3]``, each kernel upscaled with
    nearest-neighbour so every weight is a visible square.

    Kernels that see 3 channels are drawn in colour (input channel order, RGB for an image model);
    others as grey, averaged over their input channels. ``normalise="layer"`` uses one range for the
    whole layer (the seed's choice), ``"filter"`` stretches each filter to its own range.
    """
    if normalise not in FILTER_NORMALISATIONS:
        raise ValueError(f"Unknown normalisation {normalise!r}; use one of {', '.join(FILTER_NORMALISATIONS)}.")
    w = np.asarray(weight, dtype=np.float32)
    w = np.moveaxis(w, 1, -1) if w.shape[1] == 3 else w.mean(axis=1)[..., None]  # [O,kh,kw,c]
    unit = minmax(w, (1, 2, 3) if normalise == "filter" else None)
    rgb = np.rint(np.broadcast_to(unit, unit.shape[:3] + (3,)) * 255).astype(np.uint8)
    size = tile_size(len(w), max(w.shape[1:3]), target)
    return tile(resize_tiles(rgb, size), pad=max(2, size // 16))


def encode(image: np.ndarray, fmt: str) -> bytes:
    """Encode ``uint8[H,W,3]`` for the browser: ``"png"`` (lossless, fast zlib level) for flat-coloured
    grids like filters, ``"jpeg"`` (quality 92, no chroma subsampling) for feature maps, where PNG costs
    ~30× more time on this kind of detail."""
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=92, subsampling=0)
    else:
        raise ValueError(f"Unknown image format {fmt!r}; use 'png' or 'jpeg'.")
    return buffer.getvalue()
