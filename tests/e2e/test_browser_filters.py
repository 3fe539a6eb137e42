"""Browser test of the Filters tab's layer selector (issue 9 §2), in Chromium against the real app.

* ``test_filters_of_a_deeper_convolution`` — on the offline model (ImageNet weights bundled), the
  layer list names every convolution with its kind (depthwise ones say so); choosing the depthwise
  5×5 ``blocks.2.1.conv_dw`` changes the caption (depthwise, one input channel per filter) and the
  grid to the library's grid for that layer pixel for pixel, and draws the weight histogram and the
  per-filter norms; a 1×1 convolution with input channel 3 shows that slice; switching to random
  weights keeps the chosen convolution and says which weights the answer used.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from playwright.sync_api import Page

import cnnviz

from .test_browser import (
    OFFLINE_MODEL,
    dropdown_options,
    error_toasts,
    expected_grid,
    fetch_image,
    grid_shape,
    open_app,
    open_tab,
    set_weights,
    wait_image,
    wait_text,
)

pytestmark = pytest.mark.e2e

FILTERS_WORDS = re.compile(r"convolution|input channel|filters|normalisation", re.IGNORECASE)  # this tab's errors
DEEPER = "blocks.2.1.conv_dw"  # depthwise 5×5, 240 filters
POINTWISE = "blocks.1.0.conv_pw"  # 1×1, 16 → 96


def choose_convolution(page: Page, name: str) -> None:
    """Type the start of a convolution's name into the Filters tab's list and click its entry."""
    box = page.locator("#filters-layer input[role=combobox]")
    box.click()
    box.press("Control+a")
    box.press_sequentially(name, delay=10)
    page.locator("[role=option]", has_text=f"{name} ·").first.click()


def test_filters_of_a_deeper_convolution(browser_page: Page, app_url, server, shot):
    page = browser_page
    log_start = len(server.log_text())
    open_app(page, app_url)
    open_tab(page, "Filters")
    wait_text(page, "#filters-caption", startswith="conv_stem")
    first = wait_image(page, "#filters-image")

    labels = dropdown_options(page, "#filters-layer")
    convs = cnnviz.list_convolutions(OFFLINE_MODEL, "pretrained")
    assert labels == [c.label for c in convs] and len(labels) == 49
    assert "blocks.2.1.conv_dw · depthwise 5×5 · 240→240, stride 1" in labels

    choose_convolution(page, DEEPER)
    caption = wait_text(page, "#filters-caption", startswith=DEEPER)
    assert "240 filters of 1×5×5" in caption and "depthwise, each filter has one input channel" in caption
    assert "Pretrained weights" in caption
    img = wait_image(page, "#filters-image", not_src=first["src"])
    truth = cnnviz.filter_grid(OFFLINE_MODEL, "pretrained", "layer", layer=DEEPER)
    served = fetch_image(page, img["src"])
    assert np.array_equal(served, truth.image), "the Filters tab does not show the library's grid for the chosen layer"
    assert grid_shape(served) == expected_grid(240)
    assert served.std() > 20  # trained 5×5 kernels: contrast, not a flat tile
    for plot in ("#filters-histogram", "#filters-norms"):  # Vega draws the bars into a canvas or an svg
        page.wait_for_function("sel => !!document.querySelector(sel + ' canvas, ' + sel + ' svg .mark-rect')", arg=plot)
    shot("filters-deeper-depthwise")

    choose_convolution(page, POINTWISE)
    wait_text(page, "#filters-caption", startswith=POINTWISE, contains="mean over each filter's 16 input channels")
    channel = page.locator("#filters-input-channel input")
    channel.fill("3")
    channel.press("Enter")
    caption = wait_text(page, "#filters-caption", startswith=POINTWISE, contains="input channel 3 of each filter's 16")
    img2 = wait_image(page, "#filters-image", not_src=img["src"])
    sliced = cnnviz.filter_grid(OFFLINE_MODEL, "pretrained", "layer", layer=POINTWISE, input_channel=3)
    page.wait_for_function(
        "([sel, w]) => document.querySelector(sel + ' img').naturalWidth === w", arg=["#filters-image", sliced.image.shape[1]]
    )
    img2 = wait_image(page, "#filters-image")
    assert np.array_equal(fetch_image(page, img2["src"]), sliced.image)
    shot("filters-pointwise-input-channel-3")

    choose_convolution(page, DEEPER)
    wait_text(page, "#filters-caption", startswith=DEEPER)
    set_weights(page, "random")  # the comparison: the same convolution, untrained
    caption = wait_text(page, "#filters-caption", startswith=DEEPER, contains="Random weights")
    assert page.locator("#filters-layer input[role=combobox]").input_value().startswith(DEEPER)
    shot("filters-deeper-random-weights")
    assert not [t for t in error_toasts(page) if FILTERS_WORDS.search(t)], error_toasts(page)  # other tabs' toasts are theirs
    assert "not in the list of choices" not in server.log_text()[log_start:]
    assert not page.problems.page_errors


def test_filters_endpoint_takes_layer_and_input_channel(client, app_url):
    """/filters(model, weights, normalise, layer, input_channel): positional order kept, the library's
    grid, a caption ending with the weights line; a bogus layer gets the sentence with close names."""
    from gradio_client.exceptions import AppError

    path, caption = client.predict(OFFLINE_MODEL, "pretrained", "filter", POINTWISE, 5, api_name="/filters")
    truth = cnnviz.filter_grid(OFFLINE_MODEL, "pretrained", "filter", layer=POINTWISE, input_channel=5)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), truth.image)
    assert caption.startswith(f"`{POINTWISE}`") and "input channel 5 of each filter's 16" in caption
    assert caption.splitlines()[-1].startswith("✅ Pretrained weights")
    with pytest.raises(AppError, match=r"no convolution 'blocks\.2\.1\.conv_d'\. Did you mean: blocks\.2\.1\.conv_dw"):
        client.predict(model=OFFLINE_MODEL, layer="blocks.2.1.conv_d", api_name="/filters")
    with pytest.raises(AppError, match="Input channel must be 0 .each filter has one input channel"):
        client.predict(model=OFFLINE_MODEL, layer=DEEPER, input_channel=3, api_name="/filters")
