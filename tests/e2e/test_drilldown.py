"""The drill-down through the real server: /channel, /layer_stats and /activations over raw HTTP (what
a script sends, and what a hostile client sends), and a tile click in Chromium.

Values are compared with the library in this process on the bundled ImageNet-trained model (random
weights differ between processes)."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from .conftest import EXAMPLES
from .test_browser import fetch_image, open_app, open_tab, wait_image, wait_text
from .test_public_link import assert_sentence

pytestmark = pytest.mark.e2e

MODEL = "timm/tf_efficientnet_lite0"  # the bundled pretrained weights: the same numbers in both processes
LAYER = "blocks.1.1.conv_pw"  # 144×56×56
COFFEE = str(EXAMPLES / "coffee.png")


def test_activations_are_the_librarys_float32_maps(raw):
    import cnnviz.explore as explore

    status, (npy, caption) = raw.call("activations", [MODEL, {"path": COFFEE}, LAYER, "pretrained"])
    assert status == "complete", npy
    served = np.load(io.BytesIO(raw.download(npy)), allow_pickle=False)
    _, truth, _ = explore.layer_activations(MODEL, COFFEE, LAYER, "pretrained")
    assert served.dtype == np.float32 and served.shape == tuple(truth.shape) == (144, 56, 56)
    np.testing.assert_allclose(served, truth.numpy(), rtol=1e-4, atol=1e-4)
    assert "144×56×56" in caption and "Pretrained weights" in caption


def test_layer_stats_table_and_csv(raw):
    import cnnviz.explore as explore

    status, (summary, table, csv_file) = raw.call("layer_stats", [MODEL, {"path": COFFEE}, LAYER, "pretrained"])
    assert status == "complete", summary
    truth = explore.layer_stats(MODEL, COFFEE, LAYER, "pretrained").stats
    rows = table["data"]
    assert len(rows) == 144 and [r[0] for r in rows] == list(range(144))
    np.testing.assert_allclose([r[1] for r in rows], truth.mean, rtol=1e-3, atol=1e-4)
    lines = raw.download(csv_file).decode().splitlines()
    assert lines[0] == "channel,mean,max,min,std,zeros,positive,dead" and len(lines) == 145
    np.testing.assert_allclose([float(line.split(",")[2]) for line in lines[1:]], truth.max, rtol=1e-4, atol=1e-5)
    assert f"dead (all zero): **{len(truth.dead)}**" in summary and "Pretrained weights" in summary


def test_channel_overlay_enlarged_map_and_stats(raw):
    import cnnviz.explore as explore

    status, (overlay, enlarged, text) = raw.call("channel", [MODEL, {"path": COFFEE}, LAYER, 17, "pretrained", 0.6])
    assert status == "complete", overlay
    truth = explore.channel(MODEL, COFFEE, LAYER, 17, "pretrained", 0.6)
    served = np.asarray(Image.open(io.BytesIO(raw.download(overlay))).convert("RGB"))
    assert served.shape == truth.overlay.shape == (224, 224, 3)
    assert np.abs(served.astype(int) - truth.overlay.astype(int)).mean() < 3  # JPEG
    big = np.asarray(Image.open(io.BytesIO(raw.download(enlarged))).convert("RGB"))
    assert np.array_equal(big, truth.enlarged)  # PNG: exact
    assert text.startswith(f"**Channel 17** of 144 in `{LAYER}`") and f"max {truth.stats['max']:.4g}" in text
    assert "Pretrained weights" in text


@pytest.mark.parametrize("channel, hint", [
    (-1, "from 0 to 143"), (144, "from 0 to 143"), (10**12, "from 0 to 143"),
    ("3", "must be a number"), (None, "whole number"), (True, "must be a number"), (math.inf, "must be a number"),
])
def test_bad_channels_get_a_sentence(raw, channel, hint):
    assert_sentence(raw.call("channel", [MODEL, {"path": COFFEE}, LAYER, channel, "pretrained", 0.5]), hint)


@pytest.mark.parametrize("name, data, hint", [
    ("channel", [MODEL, {"path": COFFEE}, LAYER, 3, "pretrained", 7], "Parameter 'opacity' (Opacity of the map over the picture) must be from 0 to 1"),
    ("channel", [MODEL, {"path": COFFEE}, LAYER, 3.5, "pretrained", 0.5], "Parameter 'channel' (Channel) must be a whole number"),
    ("feature_maps", [MODEL, {"path": COFFEE}, LAYER, "pretrained", "first", 10**9, "auto", "channel"],
     "Parameter 'n' (N) must be a whole number from 1 to 4096"),
    ("filters", [MODEL, "pretrained", "layer", "blocks.1.0.conv_dw", -5], "Input channel"),
    ("channel", [MODEL, None, LAYER, 3, "pretrained", 0.5], "No image"),
    ("layer_stats", [MODEL, {"path": "/etc/passwd"}, LAYER, "pretrained"], "uploaded to this app"),
    ("activations", [MODEL, {"url": "data:image/png;base64,AAAA"}, LAYER, "pretrained"], "uploaded to this app"),
    ("activations", [MODEL, {"path": COFFEE}, "blocks.99", "pretrained"], "no layer"),
    ("layer_stats", [MODEL], "takes 4 parameters"),
    ("channel", [MODEL, {"path": COFFEE}, LAYER], "takes 6 parameters"),
])
def test_hostile_calls_get_a_sentence(raw, name, data, hint):
    assert_sentence(raw.call(name, data), hint)


def test_a_tile_click_shows_the_channel_on_the_picture(browser_page: Page, app_url, library, shot):
    page = browser_page
    open_app(page, app_url)
    open_tab(page, "Feature maps")
    page.locator("#input-image input[type=file]").set_input_files(COFFEE)
    wait_text(page, "#maps-caption", startswith="conv_stem")
    grid = wait_image(page, "#maps-image")
    truth = library.feature_maps(MODEL, COFFEE, None, "pretrained")
    layout = truth.layout
    # the tile of channel 10 (row 2, column 3 of a 6-column grid), at its centre, in displayed pixels
    box = page.locator("#maps-image img").bounding_box()
    scale = min(box["width"] / truth.image.shape[1], box["height"] / truth.image.shape[0])  # object-fit: contain
    left = box["x"] + (box["width"] - truth.image.shape[1] * scale) / 2
    top = box["y"] + (box["height"] - truth.image.shape[0] * scale) / 2
    y, x = layout.origin(10)
    page.mouse.click(left + (x + layout.tile_w / 2) * scale, top + (y + layout.tile_h / 2) * scale)
    text = wait_text(page, "#channel-caption", startswith="Channel 10 of 32 in conv_stem")
    assert "upsampled to the 224×224 picture the model saw" in text
    overlay = wait_image(page, "#channel-overlay")
    want = library_channel(MODEL, COFFEE, 10)
    assert np.abs(fetch_image(page, overlay["src"]).astype(int) - want.overlay.astype(int)).mean() < 3
    expect(page.locator("#channel-number input")).to_have_value("10")
    shot("tile-10-clicked")

    # the statistics table: 32 rows; a row click opens that channel
    page.locator('#stats-table [data-testid="cell-3-0"]').click()
    wait_text(page, "#channel-caption", startswith="Channel 3 of 32 in conv_stem")
    wait_image(page, "#channel-overlay", not_src=overlay["src"])
    shot("row-3-clicked")

    # the picked channel projected back to the pixels (Zeiler–Fergus), from the drill-down itself
    page.locator("#maps-projection").get_by_text("Zeiler–Fergus projection of this channel").click()
    page.locator("#maps-project").click()
    wait_text(page, "#maps-projection-caption", contains="Channel 3 of conv_stem")
    wait_image(page, "#maps-projected")
    shot("channel-3-projected")
    assert grid["src"]


def library_channel(model: str, image: str, channel: int):
    import cnnviz.explore as explore

    return explore.channel(model, image, None, channel, "pretrained", 0.5)
