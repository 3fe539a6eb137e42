"""Interventions through the real server: /intervene and /channel_importance over raw HTTP (what a script
sends, and what a hostile client sends), and the Feature maps page's two accordions in Chromium (a tile
clicked, its channel zeroed, the top-5 before and after; every channel ranked, a row clicked).

Values are compared with the library in this process on the bundled ImageNet-trained model (random weights
differ between processes)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from .conftest import EXAMPLES
from .test_browser import choose_layer, open_app, open_tab, type_model_name, wait_image, wait_text
from .test_public_link import assert_sentence, assert_served

pytestmark = pytest.mark.e2e

MODEL = "timm/tf_efficientnet_lite0"  # the bundled pretrained weights: the same numbers in both processes
LAYER = "blocks.5.0.conv_pwl"  # 192×7×7
COFFEE = str(EXAMPLES / "coffee.png")
VIT = "timm/vit_tiny_patch16_224"  # random weights offline


def test_intervene_matches_the_library(raw):
    import cnnviz

    status, (before, after, table, maps_before, maps_after, caption) = raw.call(
        "intervene", [MODEL, {"path": COFFEE}, LAYER, "top-8", "keep", 1.0, "pretrained", ""])
    assert status == "complete", before
    truth = cnnviz.intervene(MODEL, COFFEE, LAYER, "top-8", mode="keep", weights="pretrained")
    assert before["label"] == truth.top5_before[0].label == "espresso"
    assert after["label"] == truth.top5_after[0].label
    rows = table["data"]
    assert len(rows) == len(truth.changes)
    np.testing.assert_allclose([r[2] for r in rows], [c.logit_after for c in truth.changes], rtol=1e-3, atol=1e-3)
    assert maps_before["url"] and maps_after["url"]
    assert caption.startswith(f"**Channels {', '.join(map(str, truth.channels))}** of `{LAYER}` **kept, every other channel zeroed**")
    assert "Pretrained weights" in caption


def test_channel_importance_matches_the_library(raw):
    import cnnviz

    status, (caption, plot, table) = raw.call("channel_importance", [MODEL, {"path": COFFEE}, LAYER, "", "pretrained"])
    assert status == "complete", caption
    truth = cnnviz.channel_importance(MODEL, COFFEE, LAYER, weights="pretrained")
    rows = table["data"]
    assert len(rows) == 192 and [r[0] for r in rows][:10] == [int(c) for c in truth.ranking[:10]]
    np.testing.assert_allclose([r[1] for r in rows], truth.drops[truth.ranking], rtol=1e-3, atol=1e-3)
    assert caption.startswith("**espresso** (class 967") and "192 channels" in caption


@pytest.mark.parametrize("name, data, hint", [
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "three", "zero", 1.0, "pretrained", ""], "whole numbers separated by commas"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "10**12", "zero", 1.0, "pretrained", ""], "whole numbers separated by commas"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "999999999999", "zero", 1.0, "pretrained", ""], "from 0 to 191"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "top-100000", "zero", 1.0, "pretrained", ""], "from 1 to 192"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "3", "zero", 1.0, "pretrained", "blocks.99"], "no layer"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "3", "erase", 1.0, "pretrained", ""], "Parameter 'mode'"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "3", "scale", 7, "pretrained", ""], "Parameter 'factor'"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, "3", "scale", math.inf, "pretrained", ""], "must be a number"),
    ("intervene", [MODEL, {"path": COFFEE}, LAYER, {"a": 1}, "zero", 1.0, "pretrained", ""], "Channel"),
    ("intervene", [MODEL, {"path": "/etc/passwd"}, LAYER, "3", "zero", 1.0, "pretrained", ""], "uploaded to this app"),
    ("intervene", [MODEL, None, LAYER, "3", "zero", 1.0, "pretrained", ""], "No image"),
    ("intervene", [MODEL], "takes 8 parameters"),
    ("channel_importance", [MODEL, {"path": COFFEE}, LAYER, "tabbby", "pretrained"], "has no class 'tabbby'"),
    ("channel_importance", [MODEL, {"path": COFFEE}, LAYER, "100000", "pretrained"], "out of range"),
    ("channel_importance", [MODEL, {"path": COFFEE}, ["layer"], "", "pretrained"], "Parameter 'layer'"),
    ("channel_importance", [MODEL, {"url": "data:image/png;base64,AAAA"}, LAYER, "", "pretrained"], "uploaded to this app"),
    ("channel_importance", [MODEL, {"path": COFFEE}], "takes 5 parameters"),
])
def test_hostile_calls_get_a_sentence(raw, name, data, hint):
    assert_sentence(raw.call(name, data), hint)
    assert_served(raw)


def test_intervene_and_rank_channels_in_the_page(browser_page: Page, app_url, library, shot):
    import cnnviz

    page = browser_page
    open_app(page, app_url)
    open_tab(page, "Feature maps")
    page.locator("#input-image input[type=file]").set_input_files(COFFEE)
    wait_text(page, "#maps-caption", startswith="conv_stem")
    wait_image(page, "#maps-image")
    page.locator('#stats-table [data-testid="cell-5-0"]').click()  # channel 5 picked: the Intervene box follows
    wait_text(page, "#channel-caption", startswith="Channel 5 of 32 in conv_stem")

    page.locator("#maps-intervene").get_by_text("Intervene: change channels").click()
    expect(page.locator("#intervene-channels textarea")).to_have_value("5")
    page.locator("#intervene-channels textarea").fill("top-4")
    page.locator("#intervene-mode").get_by_text("keep only these").click()
    page.locator("#intervene-run").click()
    truth = cnnviz.intervene(MODEL, COFFEE, "", "top-4", mode="keep", weights="pretrained")
    text = wait_text(page, "#intervene-caption", startswith=f"Channels {', '.join(map(str, truth.channels))} of conv_stem kept")
    assert "espresso" in text and "Later layer" not in text
    expect(page.locator("#intervene-before")).to_contain_text("espresso")
    expect(page.locator("#intervene-after")).to_contain_text(truth.top5_after[0].label)
    wait_image(page, "#intervene-maps-before")
    wait_image(page, "#intervene-maps-after")
    shot("intervened")

    page.locator("#maps-importance").get_by_text("Which channels matter for this class").click()
    page.locator("#importance-run").click()
    wait_text(page, "#importance-caption", startswith="espresso (class 967")
    ranked = cnnviz.channel_importance(MODEL, COFFEE, "", weights="pretrained")
    best = int(ranked.ranking[0])
    expect(page.locator('#importance-table [data-testid="cell-0-0"]')).to_have_text(str(best))
    shot("ranked")
    page.locator('#importance-table [data-testid="cell-0-0"]').click()
    wait_text(page, "#channel-caption", startswith=f"Channel {best} of 32 in conv_stem")

    # A vision transformer's patch tokens (random weights, seeded by the name: the same in both processes)
    type_model_name(page, VIT)
    wait_text(page, "#maps-caption", startswith="patch_embed")
    choose_layer(page, "blocks.5", cnnviz.feature_maps(VIT, COFFEE, "blocks.5").layer.label)
    wait_text(page, "#maps-caption", startswith="blocks.5")
    page.locator("#intervene-channels textarea").fill("top-8")
    page.locator("#intervene-mode").get_by_text("zero (ablate)").click()
    page.locator("#intervene-run").click()
    truth = cnnviz.intervene(VIT, COFFEE, "blocks.5", "top-8", mode="zero")
    wait_text(page, "#intervene-caption", startswith=f"Channels {', '.join(map(str, truth.channels))} of blocks.5 set to zero")
    expect(page.locator("#intervene-after")).to_contain_text(truth.top5_after[0].label)
    shot("intervened-vit")
    assert not page.problems.page_errors
