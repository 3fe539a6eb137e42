"""The Attribution tab and its endpoints against the real app: /attribution and /projection over raw
HTTP (the served map is the library's), bad inputs answered with sentences, and the tab in Chromium
for the bundled timm model and a typed torchvision one."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from .conftest import EXAMPLES
from .test_browser import fetch_image, open_app, open_tab, type_model_name, wait_image, wait_text
from .test_public_link import assert_sentence

pytestmark = pytest.mark.e2e

MODEL = "timm/tf_efficientnet_lite0"  # the bundled pretrained weights: the same numbers in both processes
COFFEE = str(EXAMPLES / "coffee.png")


def test_attribution_endpoint_serves_the_librarys_map(raw):
    import cnnviz.explore as explore

    status, (overlay, npy, label, caption) = raw.call("attribution", [MODEL, {"path": COFFEE}, "gradcam", "", "", "pretrained", 0.5])
    assert status == "complete", overlay
    served = np.load(io.BytesIO(raw.download(npy)), allow_pickle=False)
    truth = explore.attribution(MODEL, COFFEE)
    assert served.dtype == np.float32 and served.shape == truth.map.shape == (7, 7)
    np.testing.assert_allclose(served, truth.map, rtol=1e-3, atol=1e-5 * float(truth.map.max()))
    assert label["label"] == "espresso"
    assert "Grad-CAM" in caption and "espresso" in caption and "Pretrained weights" in caption
    status, (overlay, npy, label, caption) = raw.call("attribution", [MODEL, {"path": COFFEE}, "layercam", "cup", "blocks.5.0", "random", 0.2])
    assert status == "complete", overlay
    assert "LayerCAM" in caption and "cup" in caption and "Random weights" in caption


def test_projection_endpoint(raw):
    status, (image, caption) = raw.call("projection", [MODEL, {"path": COFFEE}, "blocks.2.0", 3, "deconvnet", "pretrained"])
    assert status == "complete", image
    assert "Channel **3**" in caption and "deconvnet" in caption and "Pretrained weights" in caption
    status, (image, caption) = raw.call("projection", ["resnet18", {"path": COFFEE}, "layer2", 5, "guided_backprop", "random"])
    assert status == "complete", image


def test_guided_gradcam_endpoint_serves_the_librarys_picture(raw):
    from PIL import Image

    import cnnviz.explore as explore

    status, (image, caption) = raw.call("guided_gradcam", [MODEL, {"path": COFFEE}, "", "", "pretrained"])
    assert status == "complete", image
    served = np.asarray(Image.open(io.BytesIO(raw.download(image))).convert("RGB"))
    truth = explore.guided_gradcam(MODEL, COFFEE)
    assert served.shape == truth.image.shape and np.abs(served.astype(int) - truth.image.astype(int)).max() <= 1
    assert "Guided Grad-CAM" in caption and "espresso" in caption and "Pretrained weights" in caption
    assert_sentence(raw.call("guided_gradcam", [MODEL, {"path": COFFEE}, "espreso", "", "pretrained"]), "espresso")


def test_bad_inputs_are_sentences(raw):
    image = {"path": COFFEE}
    assert_sentence(raw.call("attribution", [MODEL, image, "gradcamm", "", "", "pretrained", 0.5]), "gradcam")
    assert_sentence(raw.call("attribution", [MODEL, image, "gradcam", "espreso", "", "pretrained", 0.5]), "espresso")
    assert_sentence(raw.call("attribution", [MODEL, image, "gradcam", "5000", "", "pretrained", 0.5]), "out of range")
    assert_sentence(raw.call("attribution", [MODEL, image, "gradcam", "", "blocks.99", "pretrained", 0.5]), "blocks.99")
    assert_sentence(raw.call("attribution", [MODEL, image, "gradcam", "", "", "pretrained", 3]), "Opacity")
    assert_sentence(raw.call("projection", [MODEL, image, "blocks.2.0", 9999, "deconvnet", "pretrained"]), "Channel")
    assert_sentence(raw.call("projection", [MODEL, image, "blocks.2.0", 1, "occlusion", "pretrained"]), "guided_backprop")


def test_attribution_tab_in_the_browser(browser_page: Page, app_url, shot):
    page = browser_page
    open_app(page, app_url)
    open_tab(page, "Attribution")
    page.locator("#attr-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    caption = wait_text(page, "#attr-caption", contains="Grad-CAM for")
    assert "bn2" in caption and "Pretrained weights" in caption
    first = wait_image(page, "#attr-overlay")
    pixels = fetch_image(page, first["src"])
    assert pixels.shape[1] == 224 and pixels.std() > 10
    shot("attribution-lite0-cat")
    explained = re.search(r"Grad-CAM for (.+?) \(class (\d+)", caption).group(0)
    page.locator("#attr-sanity-button").click()
    random_caption = wait_text(page, "#attr-random-caption", contains="Random weights, as chosen")
    assert explained in random_caption  # the same class explained by the untrained network, not its own guess
    wait_image(page, "#attr-random-overlay")
    shot("attribution-sanity-check")
    type_model_name(page, "resnet18")
    wait_text(page, "#attr-caption", contains="layer4")
    second = wait_image(page, "#attr-overlay", not_src=first["src"])
    assert fetch_image(page, second["src"]).shape[1] == 224
    expect(page.locator("#attr-class")).to_be_visible()
    shot("attribution-resnet18")
