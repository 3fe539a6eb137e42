"""Pure array code: normalise, colour with a lookup table, tile into a grid. No models, no gradio.

Contracts: inputs are numpy arrays and are never mutated; "unit" arrays are float32 in [0, 1];
outputs are ``uint8[H,W,3]`` RGB images.
"""
from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import vocab

EPS = 1e-8
COLORMAPS = vocab.values(vocab.Colormap)
DIVERGING = frozenset({"coolwarm"})  # drawn centred on zero: white is 0, red positive, blue negative
NORMALISATIONS = vocab.values(vocab.MapScale)  # feature maps: per channel or over the whole layer
FILTER_NORMALISATIONS = vocab.values(vocab.FilterScale)  # filters: over the whole layer (the seed's) or per filter
MAX_GRID_SIDE = 2048  # longest side of any grid sent to the browser, in pixels
MAPS_TARGET = 512  # feature-map grids: native resolution, enlarged by whole factors only below ~512 px
FILTERS_TARGET = 1024  # filter grids: kernels are tiny, so each weight becomes a visible square
GUTTER = (40, 44, 56)  # between tiles: dark slate, no glare in dark mode, not a value of any colormap's ramp
LABEL_INK = (214, 218, 228)  # channel indices and colour-bar text
DEAD_STRIPES = ((40, 44, 56), (150, 60, 60))  # an all-zero channel: diagonal stripes, never a plain colour
TEXT_PX = 12  # the smallest font size for text on a picture (tile numbers, colour-bar words)
# The page shows a picture about 560–800 px wide whatever its own width (a 2048 px grid is shrunk ~3×),
# so text grows with the picture: TEXT_PX on a picture up to TEXT_WIDTH px wide, in proportion beyond.
TEXT_WIDTH = 480


def finite_range(a: np.ndarray, axes: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of ``a``'s finite values over ``axes`` (all when None), kept as dimensions; 0 where there
    are none. An overflowed activation (inf) or a NaN would otherwise make every other value's place NaN.

    >>> [r.tolist() for r in finite_range(np.array([1.0, np.inf, -2.0, np.nan], np.float32))]
    [[-2.0], [1.0]]
    """
    finite = np.isfinite(a)
    if finite.all():
        return a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    lo = np.where(finite, a, np.inf).min(axis=axes, keepdims=True)
    hi = np.where(finite, a, -np.inf).max(axis=axes, keepdims=True)
    empty = lo > hi  # no finite value to range over
    return np.where(empty, 0, lo).astype(a.dtype), np.where(empty, 0, hi).astype(a.dtype)


def to_unit(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(a - lo) / (hi - lo)`` as float32 in [0, 1] (a range under ``EPS`` counts as ``EPS``: constant input
    → 0). Computed on halves, so a range wider than float32's largest number (weights of ±3e38, where
    ``a - lo`` is inf) still scales; values beyond the range are clipped to it, NaN goes to 0.

    >>> to_unit(np.array([-3e38, 0.0, 3e38], np.float32), np.float32(-3e38), np.float32(3e38)).tolist()
    [0.0, 0.5, 1.0]
    """
    lo_half, hi_half = np.float32(0.5) * lo, np.float32(0.5) * hi
    unit = np.multiply(a, np.float32(0.5), dtype=np.float32)
    unit -= lo_half
    unit /= np.maximum(hi_half - lo_half, np.float32(EPS / 2))
    # fmax/fmin (not clip) take the number over a NaN: NaN goes to 0, and ±inf is clipped, in two passes
    return np.fmin(np.fmax(unit, np.float32(0.0), out=unit), np.float32(1.0), out=unit)


def minmax(a: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Scale to float32 [0, 1] by the finite min and max over ``axes`` (all axes when None). Constant input
    → 0; any finite values, however large, keep their order (:func:`to_unit`).

    >>> minmax(np.array([2.0, 4.0, 6.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    a = np.asarray(a, dtype=np.float32)
    return to_unit(a, *finite_range(a, axes))


@functools.cache
def lut(name: str) -> np.ndarray:
    """A 256-entry colour lookup table ``uint8[256,3]`` for a matplotlib colormap name (computed once)."""
    if vocab.option(vocab.Colormap, name, "colormap") == "auto":
        raise ValueError("'auto' is resolved by resolve_colormap() before a lookup table is made.")
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


def tile(
    images: np.ndarray, cols: int | None = None, pad: int = 2, pad_value: int | tuple[int, int, int] = 255, band: int = 0
) -> np.ndarray:
    """Lay ``uint8[N,h,w,3]`` tiles out row by row in a grid with ``pad`` pixels between them and a
    ``band`` of ``pad_value`` pixels above each tile (for a label), as :class:`GridLayout` places them.

    ``cols`` defaults to a near-square grid (8 columns for 64 tiles, like the seed's 8×8).

    >>> tile(np.zeros((4, 2, 2, 3), np.uint8), pad=1).shape
    (5, 5, 3)
    """
    n, h, w, c = images.shape
    layout = GridLayout(n, cols or math.ceil(math.sqrt(n)), h, w, pad, band)
    row = np.empty((layout.shape[1], c), dtype=np.uint8)
    row[...] = pad_value
    # one row filled, then copied whole: numpy's broadcast of a 3-value colour over every pixel is ~60x slower
    grid = np.broadcast_to(row, (*layout.shape, c)).copy()
    for i in range(n):
        y, x = layout.origin(i)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def resize_tiles(images: np.ndarray, size: int) -> np.ndarray:
    """Resize tiles ``[N,h,w,...]`` (any ``h, w >= 1``, square or not) so the longer side is about
    ``size``: nearest-neighbour up by a whole factor (every pixel stays a crisp block), or block-average
    down by a whole step, where a side shorter than the step is averaged whole into one pixel. Tiles already
    at that size come back as they are (``images`` itself, not a copy).

    >>> resize_tiles(np.ones((2, 1, 401), np.float32), 100).shape
    (2, 1, 80)
    """
    h, w = images.shape[1:3]
    longest = max(h, w)
    if size >= longest:
        factor = max(1, size // longest)
        return images if factor == 1 else images.repeat(factor, axis=1).repeat(factor, axis=2)
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


def resolve_colormap(colormap: str, signed: bool) -> str:
    """The colormap to draw with: ``"auto"`` is grey for non-negative maps (after a ReLU) and the
    diverging ``coolwarm`` for signed ones (before a ReLU, after BatchNorm), centred on zero.

    >>> resolve_colormap("auto", signed=True), resolve_colormap("auto", signed=False)
    ('coolwarm', 'gray')
    """
    if vocab.option(vocab.Colormap, colormap, "colormap") == "auto":
        return "coolwarm" if signed else "gray"
    return colormap


def scale_maps(
    maps: np.ndarray, normalise: str, centred: bool, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """``float32[C,H,W]`` values → unit ``float32[C,H,W]`` for a colormap.

    ``normalise="channel"``: each map to its own range; ``"layer"``: one range for all (``value_range``,
    the whole layer's min and max when only some channels are drawn, else that of ``maps``). With
    ``centred`` (a diverging colormap) zero maps to 0.5 and the range is symmetric (±max |value|), so
    the sign of every pixel can be read off its colour. Without ``centred``, a channel that is constant maps to 0.5
    in per-channel scaling (it has no range of its own); all-zero ("dead") channels are marked by
    :func:`render_feature_maps`, not here.

    >>> scale_maps(np.array([[[-1.0, 2.0]]]), "channel", centred=True).tolist()
    [[[0.25, 1.0]]]
    """
    vocab.option(vocab.MapScale, normalise, "normalisation")
    a = np.asarray(maps, dtype=np.float32)
    axes = (1, 2) if normalise == "channel" else None
    if normalise == "layer" and value_range is not None and np.isfinite(value_range).all():
        lo = np.float32(value_range[0])
        hi = np.float32(value_range[1])
    else:  # the maps' own finite range (a layer's range with inf in it would scale everything to NaN)
        lo, hi = finite_range(a, axes)
    if centred:
        half = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), np.float32(EPS))
        unit = to_unit(a, -half, half)
    else:
        unit = to_unit(a, lo, hi)
    if normalise == "channel" and not centred:
        spread = np.float32(0.5) * hi - np.float32(0.5) * lo  # halves: the range itself may overflow float32
        flat = ~(spread > np.float32(EPS / 2) * np.maximum(np.abs(hi), 1.0)).reshape(-1)
        if flat.any():
            unit[flat] = np.float32(0.5)
    return unit.astype(np.float32, copy=False)


@dataclass(frozen=True)
class GridLayout:
    """Where each of ``n`` tiles of ``tile_h×tile_w`` pixels sits in a grid: ``cols`` per row, ``pad``
    pixels between cells, each cell a ``band`` of label pixels above its tile."""

    n: int
    cols: int
    tile_h: int
    tile_w: int
    pad: int = 2
    band: int = 0

    @property
    def rows(self) -> int:
        return math.ceil(self.n / self.cols)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the grid in pixels."""
        return (self.rows * (self.band + self.tile_h + self.pad) - self.pad, self.cols * (self.tile_w + self.pad) - self.pad)

    def origin(self, i: int) -> tuple[int, int]:
        """(y, x) of tile ``i``'s top-left pixel (below its label band)."""
        r, q = divmod(i, self.cols)
        return r * (self.band + self.tile_h + self.pad) + self.band, q * (self.tile_w + self.pad)

    def index_at(self, x: float, y: float) -> int | None:
        """The tile whose cell (tile or label band) holds pixel ``(x, y)``; None for gutters and outside."""
        if not (0 <= x < self.shape[1] and 0 <= y < self.shape[0]):
            return None
        q, dx = divmod(int(x), self.tile_w + self.pad)
        r, dy = divmod(int(y), self.band + self.tile_h + self.pad)
        i = r * self.cols + q
        inside = dx < self.tile_w and dy < self.band + self.tile_h
        return i if inside and i < self.n else None


def feature_grid_layout(n: int, h: int, w: int, target: int = MAPS_TARGET, labelled: bool = False) -> GridLayout:
    """The layout :func:`render_feature_maps` uses for ``n`` maps of ``h×w``: tiles resized so the
    grid is about ``target`` px (see :func:`tile_size`); when ``labelled``, a label band above each
    tile if the tile is wide enough for the longest label (``n - 1``).

    >>> feature_grid_layout(64, 56, 56, labelled=True).index_at(70, 20)
    1
    """
    size = tile_size(n, max(h, w), target)
    th, tw = _resized_shape(h, w, size)
    return _labelled_layout(n, th, tw, 2, labelled)


def _labelled_layout(n: int, th: int, tw: int, pad: int, labelled: bool) -> GridLayout:
    """A near-square layout of ``n`` tiles, with a band above each for its number (``0 … n-1``) when
    ``labelled`` and the longest number fits the tile at :func:`label_px` (or, failing that, TEXT_PX)."""
    layout = GridLayout(n, math.ceil(math.sqrt(n)), th, tw, pad)
    if not labelled:
        return layout
    for px in dict.fromkeys((label_px(layout), TEXT_PX)):
        if tw >= _text_width(str(n - 1), px) + 2:
            return GridLayout(n, layout.cols, th, tw, pad, _text_height(px) + 2)
    return layout


def text_px(width: int) -> int:
    """The font size for text on a picture ``width`` px wide, so that it reads at ~12 px in the page."""
    return max(TEXT_PX, round(width * TEXT_PX / TEXT_WIDTH))


def label_px(layout: GridLayout) -> int:
    """The font size of tile numbers in ``layout`` (its band, when it has one, is this text's height + 2)."""
    if layout.band:
        return next(px for px in range(TEXT_PX, 8 * TEXT_PX) if _text_height(px) + 2 >= layout.band)
    return text_px(layout.shape[1])


def _resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """The (h, w) :func:`resize_tiles` gives for a tile of ``h×w`` resized to ``size``."""
    longest = max(h, w)
    if size >= longest:
        factor = max(1, size // longest)
        return h * factor, w * factor
    step = math.ceil(longest / max(size, 1))
    return h // min(step, h), w // min(step, w)


def render_feature_maps(
    maps: np.ndarray,
    colormap: str = "gray",
    normalise: str = "channel",
    target: int = MAPS_TARGET,
    value_range: tuple[float, float] | None = None,
    labels: Sequence[int] | None = None,
    signed: bool | None = None,
    colour_bar: bool = False,
) -> np.ndarray:
    """Draw feature maps ``float32[C,H,W]`` as a near-square grid, ``uint8[H',W',3]``.

    ``normalise="channel"`` stretches each map to its own range; ``"layer"`` uses one range for all,
    so brightness is comparable between channels: ``value_range`` (the whole layer's min and max when
    only some channels are drawn), else the range of ``maps``. A diverging colormap (``coolwarm``, or
    ``"auto"`` on a ``signed`` layer — ``signed`` defaults to whether ``maps`` has negative values) is
    centred on zero (:func:`scale_maps`). All-zero channels are drawn as red-grey stripes, so a dead
    channel is never mistaken for a constant or a dark one. ``labels`` (one per map, e.g. channel
    indices) are written above the tiles when they fit; ``colour_bar`` adds a bar under the grid that
    says what the colours mean. Tiles sit where :func:`feature_grid_layout` says.

    >>> render_feature_maps(np.random.rand(64, 55, 55).astype(np.float32)).shape[2]
    3
    """
    maps = np.asarray(maps, dtype=np.float32)
    signed = bool((maps < 0).any()) if signed is None else signed
    name = resolve_colormap(colormap, signed)
    unit = scale_maps(maps, normalise, name in DIVERGING, value_range)
    layout = feature_grid_layout(len(maps), maps.shape[1], maps.shape[2], target, labels is not None)
    size = tile_size(len(maps), max(maps.shape[1:]), target)
    if size < max(maps.shape[1:]):  # shrink the values, then colour
        tiles = colorize(resize_tiles(unit, size), name)
    else:
        tiles = resize_tiles(colorize(unit, name), size)  # colour the few native pixels, then enlarge
    dead = ~maps.reshape(len(maps), -1).any(axis=1)
    if dead.any():
        tiles = tiles.copy() if not tiles.flags.writeable else tiles
        tiles[dead] = dead_tile(tiles.shape[1], tiles.shape[2])
    grid = tile(tiles, layout.cols, layout.pad, GUTTER, layout.band)
    _number(grid, layout, labels)
    if colour_bar:
        grid = add_colour_bar(grid, name, _bar_words(name in DIVERGING, normalise, value_range, maps))
    return grid


def _number(grid: np.ndarray, layout: GridLayout, labels: Sequence[int] | None) -> None:
    """Write ``labels`` into the bands above the tiles of ``grid`` (in place), when the layout has bands."""
    if labels is None or not layout.band:
        return
    px = label_px(layout)
    for i, label in enumerate(labels):
        y, x = layout.origin(i)
        _write(grid, str(label), y - layout.band + 1, x + 1, px=px)


def _bar_words(centred: bool, normalise: str, value_range, maps: np.ndarray) -> tuple[str, str, str]:
    """(left, middle, right) words under a feature-map grid's colour bar."""
    if normalise == "channel":
        if centred:
            return "-|max| of each map", "0", "+|max| of each map"
        return "min of each map", "", "max of each map"
    lo, hi = value_range if value_range is not None else (float(maps.min()), float(maps.max()))
    if centred:
        half = max(abs(lo), abs(hi))
        return f"{-half:.3g}", "0", f"{half:.3g}"
    return f"{lo:.3g}", "", f"{hi:.3g}"


def dead_tile(h: int, w: int) -> np.ndarray:
    """``uint8[h,w,3]`` diagonal stripes: the tile of a dead (all-zero) channel."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.asarray(DEAD_STRIPES, np.uint8)[((yy + xx) // 4) % 2]


GLYPHS = "0123456789-+.,|e×'abcdefghijklmnopqrstuvwxyz "


@functools.lru_cache(maxsize=32)
def _glyphs(px: int = TEXT_PX) -> dict[str, np.ndarray]:
    """Bitmaps ``uint8[h,w]`` (0–255 coverage) of the characters labels and colour bars use, drawn
    once per font size ``px`` with Pillow's built-in font, all cropped to the rows any of them covers
    (one height per size), each followed by a one-pixel gap so that letters never touch."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=px)
    drawn = {}
    for ch in GLYPHS:
        canvas = Image.new("L", (2 * px + 2, 2 * px + 2))
        ImageDraw.Draw(canvas).text((0, 0), ch, font=font, fill=255)
        width = max(math.ceil(font.getlength(ch)), 3)
        drawn[ch] = np.asarray(canvas)[:, :width]
    rows = np.flatnonzero(np.any(np.concatenate(list(drawn.values()), axis=1), axis=1))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    gap = max(1, px // 12)
    return {ch: np.pad(a[top:bottom], ((0, 0), (0, gap))) for ch, a in drawn.items()}


def _text_height(px: int = TEXT_PX) -> int:
    return _glyphs(px)["0"].shape[0]


@functools.lru_cache(maxsize=8192)
def _text_mask(text: str, px: int = TEXT_PX) -> np.ndarray:
    """Coverage ``float32[h,w,1]`` in [0, 1] of ``text`` set in the glyphs of :func:`_glyphs`."""
    glyphs = _glyphs(px)
    return (np.concatenate([glyphs.get(c.lower(), glyphs[" "]) for c in text], axis=1).astype(np.float32) / 255.0)[..., None]


def _write(image: np.ndarray, text: str, y: int, x: int, ink: tuple[int, int, int] = LABEL_INK, px: int = TEXT_PX) -> None:
    """Write ``text`` into ``image`` (uint8[H,W,3], changed in place) with its top-left at (y, x) in
    font size ``px``, clipped at the image's edges."""
    if not text:
        return
    cov = _text_mask(text, px)
    region = image[y : y + cov.shape[0], x : x + cov.shape[1]]
    cov = cov[: region.shape[0], : region.shape[1]]
    region[...] = (region * (1 - cov) + np.asarray(ink, np.float32) * cov).astype(np.uint8)


def _text_width(text: str, px: int = TEXT_PX) -> int:
    return _text_mask(text, px).shape[1] if text else 0


def add_colour_bar(image: np.ndarray, colormap: str, words: tuple[str, str, str]) -> np.ndarray:
    """``image`` with a colour bar under it: the colormap's ramp across the width, ``words``
    (left, middle, right) written under its ends and its middle, in a font that grows with the width
    (:func:`text_px`) so they read in the page. Returns a new ``uint8[H',W,3]``."""
    w = image.shape[1]
    px = text_px(w)
    while px > TEXT_PX and sum(_text_width(word, px) for word in words) + 4 * px > w:
        px -= 1  # a narrow picture: smaller words rather than words run together
    height = px
    bar = colorize(np.broadcast_to(np.linspace(0.0, 1.0, w, dtype=np.float32), (height, w)), colormap)
    text = np.empty((_text_height(px) + 4, w, 3), np.uint8)
    text[...] = GUTTER
    left, middle, right = words
    _write(text, left, 2, 1, px=px)
    if middle:
        _write(text, middle, 2, max(0, w // 2 - _text_width(middle, px) // 2), px=px)
    _write(text, right, 2, max(0, w - _text_width(right, px) - 1), px=px)
    gap = np.empty((3, w, 3), np.uint8)
    gap[...] = GUTTER
    return np.concatenate([image, gap, bar, text], axis=0)


def upsample(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``float32[h,w]`` to ``float32[height,width]`` (pixel centres aligned, as
    ``F.interpolate(..., align_corners=False)``)."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(picture: np.ndarray, heat: np.ndarray, opacity: float) -> np.ndarray:
    """Blend ``heat`` (uint8[H,W,3]) over ``picture`` (uint8[H,W,3]): ``opacity`` 0 shows only the
    picture, 1 only the heat map."""
    opacity = vocab.unit_interval(opacity, "Opacity")
    blended = picture.astype(np.float32) * (1.0 - opacity) + heat.astype(np.float32) * opacity
    return np.rint(blended).astype(np.uint8)


def filter_grid_layout(n: int, kh: int, kw: int, target: int = FILTERS_TARGET, labelled: bool = True) -> GridLayout:
    """The layout :func:`render_filters` uses for ``n`` kernels of ``kh×kw``: each kernel enlarged to
    about ``target`` px for the grid, and (``labelled``) a band above each tile for its filter number
    when the number fits.

    >>> filter_grid_layout(64, 7, 7).band > 0
    True
    """
    size = tile_size(n, max(kh, kw), target)
    th, tw = _resized_shape(kh, kw, size)
    return _labelled_layout(n, th, tw, max(2, size // 16), labelled)


def render_filters(weight: np.ndarray, normalise: str = "layer", target: int = FILTERS_TARGET,
                   labelled: bool = True) -> np.ndarray:
    """Draw conv kernels ``float32[O,I,kh,kw]`` as a grid, ``uint8[H,W,3]``, each kernel upscaled with
    nearest-neighbour so every weight is a visible square, each numbered (``labelled``, when the number
    fits above the tile) so a flagged filter can be found. Tiles sit where :func:`filter_grid_layout` says.

    Kernels that see 3 channels are drawn in colour (input channel order, RGB for an image model);
    others as grey, averaged over their input channels. ``normalise="layer"`` uses one range for the
    whole layer (the seed's choice), ``"filter"`` stretches each filter to its own range.
    """
    vocab.option(vocab.FilterScale, normalise, "normalisation")
    w = np.asarray(weight, dtype=np.float32)
    # [O,kh,kw,c]; means summed in float64, where huge finite weights do not overflow
    w = np.moveaxis(w, 1, -1) if w.shape[1] == 3 else w.mean(axis=1, dtype=np.float64).astype(np.float32)[..., None]
    unit = minmax(w, (1, 2, 3) if normalise == "filter" else None)
    rgb = np.rint(np.broadcast_to(unit, unit.shape[:3] + (3,)) * 255).astype(np.uint8)
    layout = filter_grid_layout(len(w), w.shape[1], w.shape[2], target, labelled)
    tiles = resize_tiles(rgb, tile_size(len(w), max(w.shape[1:3]), target))
    grid = tile(tiles, layout.cols, layout.pad, GUTTER, layout.band)  # dark gutters: no glare in dark mode
    _number(grid, layout, range(len(w)))
    return grid


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


# --------------------------------------------------------------------------------------------------
# Composed pictures: what the views put beside or over the picture the model saw
# --------------------------------------------------------------------------------------------------

GAP = 8  # px of gutter between two pictures side by side


def empty_grid() -> np.ndarray:
    """What an empty selection (no dead channel to show) draws: one gutter-coloured square ``uint8[64,64,3]``."""
    return np.full((64, 64, 3), GUTTER, np.uint8)


def draw_feature_grid(
    maps: np.ndarray, chosen: Sequence[int], colormap: str, normalise: str, value_range: tuple[float, float],
) -> tuple[np.ndarray, GridLayout | None, str]:
    """The grid of channels ``chosen`` of ``maps`` (``float32[C,H,W]``, the whole layer, whose min and max
    are ``value_range``), each tile labelled with its index, a colour bar below; its layout; the colormap it
    was drawn with (``auto`` resolved). No channel chosen: :func:`empty_grid` and no layout.

    >>> grid, layout, name = draw_feature_grid(np.ones((4, 8, 8), np.float32), [2, 0], "auto", "channel", (1.0, 1.0))
    >>> grid.dtype, layout.cols, name
    (dtype('uint8'), 2, 'gray')
    """
    lo, hi = value_range
    signed = lo < 0
    name = resolve_colormap(colormap, signed)
    if not len(chosen):
        return empty_grid(), None, name
    whole = (lo, hi) if normalise == "layer" else None  # all channels, not just those shown
    chosen = list(chosen)
    drawn = maps[: len(chosen)] if chosen == list(range(len(chosen))) else np.asarray(maps)[chosen]  # "first": a view
    grid = render_feature_maps(drawn, colormap, normalise, value_range=whole,
                               labels=chosen, signed=signed, colour_bar=True)
    return grid, feature_grid_layout(len(chosen), maps.shape[1], maps.shape[2], labelled=True), name


def cam_picture(picture: np.ndarray, raw: np.ndarray, opacity: float) -> np.ndarray:
    """A class activation map ``float32[h,w]`` upsampled over ``picture`` (``uint8[H,W,3]``, the picture the
    model saw) in inferno with ``opacity``, a colour bar below (0 … its maximum). A map with no positive
    value draws as zero (nothing explains the class there).

    >>> cam_picture(np.zeros((32, 32, 3), np.uint8), np.ones((4, 4), np.float32), 0.5).shape[1]
    32
    """
    h, w = picture.shape[:2]
    unit = scale_maps(upsample(raw, h, w)[None], "channel", centred=False)[0]
    if float(raw.max()) <= 0:
        unit = np.zeros_like(unit)
    heat = colorize(unit, "inferno")
    return add_colour_bar(overlay(picture, heat, opacity), "inferno", ("0", "", f"max {float(raw.max()):.3g}"))


def signed_picture(signal: np.ndarray) -> np.ndarray:
    """A signed signal at the input (``float32[3,H,W]``) as a picture ``uint8[H,W,3]``: grey is zero,
    brighter or darker colours the signal's sign, scaled by its largest magnitude (Zeiler & Fergus's way).

    >>> signed_picture(np.array([[[-1.0, 0.0, 1.0]]] * 3, np.float32))[0, :, 0].tolist()
    [0, 128, 255]
    """
    half = max(float(np.abs(signal).max()), EPS)
    return np.rint(np.clip(0.5 + signal / (2 * half), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two pictures of the same height ``uint8[H,W,3]`` with a gutter of :data:`GAP` px between them."""
    gap = np.empty((left.shape[0], GAP, 3), np.uint8)
    gap[...] = GUTTER
    return np.concatenate([left, gap, right], axis=1)


def crop_box(picture: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``picture`` with everything outside ``box`` (top, left, bottom, right) painted gutter colour."""
    crop = np.full_like(picture, GUTTER)
    top, left, bottom, right = box
    crop[top:bottom, left:right] = picture[top:bottom, left:right]
    return crop
