"""Transformer-native attribution and the further CAMs against the real app: a vision transformer (random
weights: the app is offline) opens on attention rollout in Chromium and draws it; XGrad-CAM on ResNet-18;
/attribution serves the library's rollout over raw HTTP, and hostile payloads get sentences."""
from __future__ import annotations

import io

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from .conftest import EXAMPLES
from .test_browser import fetch_image, open_app, open_tab, type_model_name, wait_image, wait_text
from .test_browser_shell import open_link
from .test_public_link import assert_sentence

pytestmark = pytest.mark.e2e

VIT = "timm/vit_tiny_patch16_224"
COFFEE = str(EXAMPLES / "coffee.png")


def test_attribution_endpoint_serves_the_librarys_rollout(raw):
    import cnnviz.explore as explore

    for method in ("rollout", "chefer"):
        status, (overlay, npy, label, caption) = raw.call("attribution", [VIT, {"path": COFFEE}, method, "", "", "random", 0.5])
        assert status == "complete", overlay
        served = np.load(io.BytesIO(raw.download(npy)), allow_pickle=False)
        truth = explore.attribution(VIT, COFFEE, method, weights="random")
        assert served.dtype == np.float32 and served.shape == truth.raw.shape == (14, 14)
        np.testing.assert_allclose(served, truth.raw, rtol=1e-3, atol=1e-5 * float(np.abs(truth.raw).max()))
        assert explore.METHOD_NAMES[method] in caption and "14×14 patch grid" in caption and "Random weights" in caption
    status, (overlay, npy, label, caption) = raw.call("attribution", ["resnet18", {"path": COFFEE}, "xgradcam", "", "layer3", "random", 0.5])
    assert status == "complete", overlay
    assert "XGrad-CAM" in caption and "layer3" in caption


def test_hostile_attribution_payloads_get_sentences(raw):
    image = {"path": COFFEE}
    assert_sentence(raw.call("attribution", ["resnet18", image, "rollout", "", "", "random", 0.5]), "vision transformer")
    assert_sentence(raw.call("attribution", [VIT, image, "legrad", "", "", "random", 0.5]), "torchvision")
    assert_sentence(raw.call("attribution", [VIT, image, "rolout", "", "", "random", 0.5]), "rollout")
    assert_sentence(raw.call("attribution", [VIT, image, ["rollout"], "", "", "random", 0.5]), "method")
    assert_sentence(raw.call("attribution", [VIT, image, "chefer", "99999999999", "", "random", 0.5]), "out of range")
    assert_sentence(raw.call("attribution", [VIT, image, "chefer", "", "", "random", 1e9]), "Opacity")
    assert_sentence(raw.call("attribution", ["resnet18", image, "sscam", "", "layer4", "random", 0.5]), "masked copies")
    assert_sentence(raw.call("attribution", [VIT, image, "", "", "", "random", 0.5]), "rollout")  # the API names its method
    status, outputs = raw.call("attribution", [VIT, image, "rollout", "", "", "random", 0.5])
    assert status == "complete", outputs  # the server is alive and answers


def test_a_vit_opens_on_attention_rollout_and_a_cnn_takes_xgradcam(browser_page: Page, app_url, shot):
    page = browser_page
    open_app(page, app_url)
    open_tab(page, "Attribution")
    page.locator("#attr-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    wait_image(page, "#attr-overlay")
    type_model_name(page, VIT)
    caption = wait_text(page, "#attr-caption", contains="Attention rollout for")
    assert "14×14 patch grid" in caption and "Random weights" in caption
    expect(page.get_by_role("radio", name="Attention rollout (ViT)", exact=True)).to_be_checked()
    drawn = wait_image(page, "#attr-overlay")
    pixels = fetch_image(page, drawn["src"])
    assert pixels.shape[1] == 224 and pixels.std() > 10
    shot("rollout-vit-tiny")
    page.get_by_role("radio", name="Gradient-weighted rollout (ViT)", exact=True).check()
    wait_text(page, "#attr-caption", contains="Gradient-weighted rollout for")
    wait_image(page, "#attr-overlay", not_src=drawn["src"])
    shot("chefer-vit-tiny")
    type_model_name(page, "resnet18")
    wait_text(page, "#attr-caption", contains="Grad-CAM for")  # an attention method does not apply: back to Grad-CAM
    expect(page.get_by_role("radio", name="Grad-CAM", exact=True)).to_be_checked()
    first = wait_image(page, "#attr-overlay")
    page.get_by_role("radio", name="XGrad-CAM", exact=True).check()
    caption = wait_text(page, "#attr-caption", contains="XGrad-CAM for")
    assert "layer4" in caption
    second = wait_image(page, "#attr-overlay", not_src=first["src"])
    assert fetch_image(page, second["src"]).shape[1] == 224
    shot("xgradcam-resnet18")


def test_is_cam_says_its_cost_first_and_a_link_opens_a_vit_on_the_method_it_names(browser_page: Page, app_url, shot):
    page = browser_page
    open_link(page, app_url, model="mobilenet_v3_small", weights="random", tab="attribution", layer="features.2")
    page.locator("#attr-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    wait_text(page, "#attr-caption", contains="Grad-CAM for")
    page.get_by_role("radio", name="IS-CAM (slow)", exact=True).check()
    said = wait_text(page, "#attr-caption", contains="IS-CAM at features.2: 24 channels × 10 steps")
    assert "passes" in said and "≈" in said
    caption = wait_text(page, "#attr-caption", contains="IS-CAM for")
    assert "features.2" in caption
    wait_image(page, "#attr-overlay")
    shot("iscam-cost-then-map")
    open_link(page, app_url, model="timm/vit_tiny_patch16_224", tab="attribution", method="chefer", photo="coffee")
    caption = wait_text(page, "#attr-caption", contains="Gradient-weighted rollout for")
    assert "14×14 patch grid" in caption
    expect(page.get_by_role("radio", name="Gradient-weighted rollout (ViT)", exact=True)).to_be_checked()
    wait_image(page, "#attr-overlay")
    shot("chefer-from-a-link")
