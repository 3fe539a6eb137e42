"""render.py: pure array code, checked against hand computations."""
from __future__ import annotations

import numpy as np
import pytest

from cnnviz import render


def test_minmax_per_axis_and_constant_input():
    a = np.array([[[0.0, 2.0], [4.0, 8.0]], [[5.0, 5.0], [5.0, 5.0]]], dtype=np.float32)
    out = render.minmax(a, (1, 2))
    np.testing.assert_allclose(out[0], [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(out[1], 0)  # constant channel: no division by zero
    assert a[0, 1, 1] == 8.0  # input not mutated


def test_lut_matches_matplotlib_and_grey_is_identity():
    from matplotlib import colormaps

    np.testing.assert_array_equal(render.lut("gray")[:, 0], np.arange(256))
    expected = np.round(colormaps["viridis"](200 / 255)[:3] * np.array(255)).astype(np.uint8)
    np.testing.assert_array_equal(render.lut("viridis")[200], expected)
    with pytest.raises(ValueError, match="Unknown colormap"):
        render.lut("jet")


def test_tile_places_tiles_row_by_row_with_padding():
    tiles = np.stack([np.full((2, 3, 3), i * 10, np.uint8) for i in range(5)])
    grid = render.tile(tiles, cols=3, pad=1, pad_value=255)
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2, 3)
    assert grid[0, 0, 0] == 0 and grid[0, 4, 0] == 10 and grid[3, 0, 0] == 30 and grid[3, 4, 0] == 40
    assert grid[2, 0, 0] == 255 and grid[0, 3, 0] == 255  # padding rows/columns
    assert (grid[3:, 8:] == 255).all()  # empty sixth cell


def test_resize_tiles_nearest_up_and_block_mean_down():
    a = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    up = render.resize_tiles(a, 6)
    assert up.shape == (1, 6, 6) and (up[0, :3, :3] == 0).all() and (up[0, 3:, 3:] == 3).all()
    down = render.resize_tiles(np.arange(16, dtype=np.float32).reshape(1, 4, 4), 2)
    np.testing.assert_allclose(down[0], [[2.5, 4.5], [10.5, 12.5]])


def test_feature_map_grid_pixels_come_from_the_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 5, 5)).astype(np.float32) * 10
    for labels in (None, range(4)):
        grid = render.render_feature_maps(maps, "gray", "channel", labels=labels)
        layout = render.feature_grid_layout(4, 5, 5, labelled=labels is not None)
        assert grid.shape[:2] == layout.shape
        # tile 3 sits in row 1, column 1 of a 2×2 grid; its top-left pixel is the channel's normalised [0, 0]
        y, x = layout.origin(3)
        assert x == layout.tile_w + 2 and y == layout.band + layout.tile_h + 2 + layout.band
        m = maps[3]
        assert grid[y, x, 0] == round((m[0, 0] - m.min()) / (m.max() - m.min()) * 255)
        assert layout.index_at(x + 1, y + 1) == 3 and layout.index_at(x - 1, y + 1) is None  # the gutter


def test_layer_normalisation_keeps_relative_brightness():
    maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)]).astype(np.float32)
    maps[:, 0, 0] = 0.0
    grid = render.render_feature_maps(maps, "gray", "layer")
    size = render.tile_size(2, 4, render.MAPS_TARGET)
    left, right = grid[size - 1, size - 1, 0], grid[size - 1, size + 2 + size - 1, 0]
    assert right > left  # per-layer scale: the brighter channel stays brighter


def test_render_filters_colour_and_layer_normalisation():
    w = np.zeros((2, 3, 3, 3), np.float32)
    w[0, 0] = 1.0  # filter 0: pure red
    w[1, 2] = -1.0  # filter 1: no blue at all
    img = render.render_filters(w, "layer")
    layout = render.filter_grid_layout(2, 3, 3)
    (y0, x0), (y1, x1) = layout.origin(0), layout.origin(1)
    assert tuple(img[y0 + 1, x0 + 1]) == (255, 127, 127) or tuple(img[y0 + 1, x0 + 1]) == (255, 128, 128)
    second = img[y1 + 1, x1 + 1]
    assert second[2] == 0 and second[0] == second[1]
    assert render.render_filters(w, "filter").shape == img.shape


def test_big_layers_are_capped():
    maps = np.zeros((2048, 7, 7), np.float32)
    assert max(render.render_feature_maps(maps).shape[:2]) <= render.MAX_GRID_SIDE
    maps = np.zeros((512, 56, 56), np.float32)
    assert max(render.render_feature_maps(maps).shape[:2]) <= render.MAX_GRID_SIDE


def test_layer_normalisation_uses_the_whole_layers_range_when_given():
    maps = np.full((2, 4, 4), 5.0, np.float32)
    maps[:, 0, 0] = 0.0
    own = render.render_feature_maps(maps, "gray", "layer")
    whole = render.render_feature_maps(maps, "gray", "layer", value_range=(0.0, 10.0))
    assert own[1, 1, 0] == 0 and own[-2, -2, 0] == 255  # stretched to the drawn channels' own range
    assert whole[-2, -2, 0] == 128  # 5 in a layer that reaches 10 is mid-grey


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1), (3, 1, 1), (3, 1, 401), (7, 401, 1), (7, 23, 3000), (2, 1, 5000), (64, 7, 7), (2304, 14, 14), (1, 600, 600)],
)
def test_any_map_shape_draws(shape):
    maps = np.random.default_rng(0).random(shape, dtype=np.float32)
    for normalise in render.NORMALISATIONS:
        grid = render.render_feature_maps(maps, "viridis", normalise)
        assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3 and min(grid.shape[:2]) >= 1
        assert max(grid.shape[:2]) <= render.MAX_GRID_SIDE + 2 * 128  # the cap, give or take one tile's padding


@pytest.mark.parametrize(
    "h, w, size, expected",
    [(1, 401, 100, (1, 80)), (401, 1, 100, (80, 1)), (3, 1, 128, (126, 42)), (23, 3000, 128, (1, 125)), (7, 7, 3, (2, 2))],
)
def test_resize_tiles_handles_sides_shorter_than_the_step(h, w, size, expected):
    tiles = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    out = render.resize_tiles(tiles, size)
    assert out.shape == (2, *expected)
    if size < max(h, w):  # each output pixel is the mean of its block (a side shorter than the step: all of it)
        step = -(-max(h, w) // size)
        sh, sw = min(step, h), min(step, w)
        np.testing.assert_allclose(out[1, 0, 0], tiles[1, :sh, :sw].mean(), rtol=1e-6)
        corner = tiles[0, (expected[0] - 1) * sh : expected[0] * sh, (expected[1] - 1) * sw : expected[1] * sw]
        np.testing.assert_allclose(out[0, -1, -1], corner.mean(), rtol=1e-6)


# --- Weights and maps of any finite size (a user's checkpoint can hold ±3e38, where x - min overflows float32) ---

HUGE = 3e38  # float32's largest is 3.4e38: a range from -HUGE to HUGE does not fit in it


def test_minmax_scales_ranges_wider_than_float32():
    a = np.array([-HUGE, -HUGE / 2, 0.0, HUGE], np.float32)
    with np.errstate(all="raise"):  # no overflow on the way either
        np.testing.assert_allclose(render.minmax(a), [0.0, 0.25, 0.5, 1.0], atol=1e-6)


def test_minmax_ranges_over_finite_values_only():
    a = np.array([np.nan, -np.inf, 2.0, 4.0, 6.0, np.inf], np.float32)
    np.testing.assert_array_equal(render.minmax(a), [0.0, 0.0, 0.0, 0.5, 1.0, 1.0])  # NaN low, ±inf at the ends
    np.testing.assert_array_equal(render.minmax(np.full(3, np.nan, np.float32)), [0.0, 0.0, 0.0])


@pytest.mark.parametrize("normalise", render.NORMALISATIONS)
@pytest.mark.parametrize("centred", [False, True], ids=["min-max", "centred"])
def test_scale_maps_keeps_the_order_of_huge_values(normalise, centred):
    maps = np.array([[[-HUGE, 0.0], [HUGE / 2, HUGE]]], np.float32)
    unit = render.scale_maps(maps, normalise, centred)
    assert unit.dtype == np.float32 and np.isfinite(unit).all()
    np.testing.assert_allclose(unit[0].ravel(), [0.0, 0.5, 0.75, 1.0], atol=1e-6)


def test_an_infinite_layer_range_falls_back_to_the_maps_own():
    maps = np.array([[[0.0, 1.0]], [[2.0, 4.0]]], np.float32)
    unit = render.scale_maps(maps, "layer", centred=False, value_range=(0.0, float("inf")))
    np.testing.assert_allclose(unit.ravel(), [0.0, 0.25, 0.5, 1.0])


def test_huge_filters_are_drawn_in_order():
    w = np.zeros((3, 2, 1, 1), np.float32)  # grey tiles: the mean over 2 input channels
    w[0], w[1], w[2] = -HUGE, 0.0, HUGE  # their float32 sum overflows, their mean does not
    img = render.render_filters(w, "layer")
    layout = render.filter_grid_layout(3, 1, 1)
    assert [int(img[layout.origin(i)][0]) for i in range(3)] == [0, 128, 255]


def test_filters_carry_their_numbers_and_text_grows_with_the_picture():
    """Each filter tile is numbered in the band above it (ink there, none without labels); colour-bar words
    on a 2048 px grid are set in a font about 4× the one on a 512 px grid, so both read at ~12 px in the page."""
    w = np.random.default_rng(0).normal(size=(64, 3, 7, 7)).astype(np.float32)
    layout = render.filter_grid_layout(64, 7, 7)
    img = render.render_filters(w)
    assert layout.band > 0 and img.shape[:2] == layout.shape
    for i in (0, 9, 63):
        y, x = layout.origin(i)
        band = img[y - layout.band : y, x : x + layout.tile_w]
        assert (band != render.GUTTER).any(axis=-1).sum() > 20, f"filter {i} has no number"
    plain = render.render_filters(w, labelled=False)
    assert plain.shape[0] < img.shape[0]
    small = render.add_colour_bar(np.zeros((10, 512, 3), np.uint8), "gray", ("-|max| of each map", "0", "+|max| of each map"))
    large = render.add_colour_bar(np.zeros((10, 2048, 3), np.uint8), "gray", ("-|max| of each map", "0", "+|max| of each map"))
    assert render.text_px(512) >= render.TEXT_PX and render.text_px(2048) >= 4 * render.TEXT_PX
    assert large.shape[0] - 10 >= 3 * (small.shape[0] - 10)
