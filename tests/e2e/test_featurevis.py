"""What a channel looks for through the real server: /channel_visualization over raw HTTP (what a script
sends, and what a hostile client sends), and the button under the Feature maps channel view in Chromium.

Values are compared with the library in this process on the bundled ImageNet-trained model (random
weights differ between processes); the image is generated on the CPU with a seed, so both agree."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page

from .conftest import EXAMPLES
from .test_browser import fetch_image, open_app, open_tab, wait_image, wait_text
from .test_public_link import assert_sentence

pytestmark = pytest.mark.e2e

MODEL = "timm/tf_efficientnet_lite0"
LAYER = "blocks.3.1.bn1"  # 480×14×14, after ReLU6
COFFEE = str(EXAMPLES / "coffee.png")


def test_the_image_and_the_activation_it_reaches(raw):
    import cnnviz.explore as explore

    status, (image, caption) = raw.call("channel_visualization", [MODEL, LAYER, 7, 4, "pretrained", 3])
    assert status == "complete", image
    served = np.asarray(Image.open(io.BytesIO(raw.http.get(image["url"]).content)).convert("RGB"))
    truth = explore.channel_visualization(MODEL, LAYER, 7, 4, "pretrained", 3)
    assert served.shape == truth.image.shape == (128, 128, 3)
    assert np.abs(served.astype(int) - truth.image.astype(int)).max() <= 2  # PNG of the same seeded run
    assert caption.startswith(f"**Channel 7** of 480 in `{LAYER}`") and "in 4 steps (seed 3)" in caption
    assert f"mean activation of **{truth.activation:.4g}**" in caption
    assert caption.rstrip().splitlines()[-1].startswith("✅ Pretrained weights")


@pytest.mark.parametrize("data, hint", [
    ([MODEL, LAYER, 480, 4, "pretrained", 0], "from 0 to 479"),
    ([MODEL, LAYER, -1, 4, "pretrained", 0], "from 0 to 479"),
    ([MODEL, LAYER, 2.5, 4, "pretrained", 0], "whole number"),
    ([MODEL, LAYER, None, 4, "pretrained", 0], "whole number"),
    ([MODEL, LAYER, 3, 0, "pretrained", 0], "from 1 to 2048"),
    ([MODEL, LAYER, 3, 10**6, "pretrained", 0], "from 1 to 2048"),
    ([MODEL, LAYER, 3, math.inf, "pretrained", 0], "Steps"),
    ([MODEL, LAYER, 3, 4, "pretrained", -2], "Seed"),
    ([MODEL, LAYER, 3, 4, "pretrained", "x"], "Seed"),
    ([MODEL, "blocks.99", 3, 4, "pretrained", 0], "no layer"),
    ([MODEL, LAYER, 3, 4, "trained", 0], "weights"),
    (["resnet5O", LAYER, 3, 4, "pretrained", 0], "resnet50"),
    ([MODEL, LAYER], "takes 6 parameters"),
])
def test_bad_calls_get_a_sentence(raw, data, hint):
    assert_sentence(raw.call("channel_visualization", data), hint)


def test_the_button_paints_what_the_picked_channel_looks_for(browser_page: Page, app_url, shot):
    page = browser_page
    open_app(page, app_url)
    open_tab(page, "Feature maps")
    page.locator("#input-image input[type=file]").set_input_files(COFFEE)
    wait_text(page, "#maps-caption", startswith="conv_stem")
    box = page.locator("#maps-image img").bounding_box()
    wait_image(page, "#maps-image")
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.1)  # a tile of the first row
    text = wait_text(page, "#channel-caption", startswith="Channel ")
    picked = int(text.split()[1])
    steps = page.locator("#featurevis-steps input[type=number]")
    steps.fill("4")
    steps.press("Enter")
    page.locator("#featurevis-button").click()
    caption = wait_text(page, "#featurevis-caption", startswith=f"Channel {picked} of 32 in conv_stem")
    assert "in 4 steps (seed 0)" in caption and "Your photo reaches" in caption and "Pretrained weights" in caption
    image = wait_image(page, "#featurevis-image")
    assert fetch_image(page, image["src"]).shape == (128, 128, 3)
    shot("channel-looks-for")
