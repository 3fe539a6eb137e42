"""Your own architecture in the page: ``python -m cnnviz serve --model tests.fixtures.custom_net:factory``
(the operator's module, imported at start-up) is in the picker, opened by default, and every tab shows
it as the library does, in Chromium: Architecture, Filters, Feature maps, Attribution and Compare."""
from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

from tests.fixtures import custom_net

from .conftest import EXAMPLES, UI_TIMEOUT_MS
from .test_browser import (
    assert_close,
    choose_layer,
    error_toasts,
    fetch_image,
    open_app,
    open_tab,
    top_prediction,
    wait_image,
    wait_text,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ENTRY = ("-m", "cnnviz", "serve", "--device", "cpu", "--model", "tests.fixtures.custom_net:factory")


def test_the_operators_module_is_opened_and_every_tab_shows_it_as_the_library_does(start, chromium, tmp_path):
    import cnnviz

    app = start(entry=ENTRY).serving()
    handle = custom_net.factory()  # the same module in this process: the truth the page is compared with
    cat = str(EXAMPLES / "cat.png")
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        open_app(page, app.url)
        expect(page.get_by_label("Model", exact=True)).to_have_value(handle.spec.label)
        wait_text(page, "#weights-notice", contains="module/custom-net")
        summary = cnnviz.architecture(handle, depth=3)
        wait_text(page, "#arch-totals", contains=f"{summary.total_params:,}")

        open_tab(page, "Feature maps")
        page.locator("#input-image input[type=file]").set_input_files(cat)
        truth = cnnviz.feature_maps(handle, cat)
        caption = wait_text(page, "#maps-caption", startswith="stem.0")
        assert "16×48×64" in caption, caption  # the non-square input's maps, as the module makes them
        first = wait_image(page, "#maps-image")
        assert_close(fetch_image(page, first["src"]), truth.image, "cat at stem.0")
        assert top_prediction(page) == truth.predictions[0].label and truth.predictions[0].label in custom_net.LABELS

        layer = "block.norm"  # the channels-last block: N×H×W×C drawn as C×H×W
        truth = cnnviz.feature_maps(handle, cat, layer)
        choose_layer(page, layer, truth.layer.label)
        wait_text(page, "#maps-caption", startswith=f"{layer} · LayerNorm · 32×24×32")
        shown = wait_image(page, "#maps-image", not_src=first["src"])
        assert_close(fetch_image(page, shown["src"]), truth.image, f"cat at {layer}")
        page.screenshot(path=str(tmp_path / "custom-module-feature-maps.png"), full_page=True)

        open_tab(page, "Filters")
        grid = cnnviz.filter_grid(handle)  # the first convolution: the stem's 3×3 RGB kernels
        wait_text(page, "#filters-caption", startswith=grid.conv.name)
        served = fetch_image(page, wait_image(page, "#filters-image")["src"])
        assert np.array_equal(served, grid.image), "the Filters tab does not show the module's own kernels"

        open_tab(page, "Attribution")  # the photo uploaded in Feature maps is the page's photo here too
        cam = cnnviz.attribution(handle, cat)
        caption = wait_text(page, "#attr-caption", contains="Grad-CAM for")
        assert cam.layer.name in caption and cam.label in caption, caption
        served = fetch_image(page, wait_image(page, "#attr-overlay")["src"])
        assert_close(served, cam.overlay, "Grad-CAM of the module")

        open_tab(page, "Compare")  # opens on the module: its trained weights against a seeded random copy
        wait_text(page, "#cmp-caption", contains="Random weights, as chosen")
        expect(page.locator("#cmp-a-0")).to_contain_text(grid.conv.name)
        expect(page.locator("#cmp-b-0 img")).to_be_visible()
        a = fetch_image(page, page.locator("#cmp-a-0 img").get_attribute("src"))
        b = fetch_image(page, page.locator("#cmp-b-0 img").get_attribute("src"))
        assert a.shape == b.shape and not np.array_equal(a, b)
        assert error_toasts(page) == [] and errors == []
    finally:
        context.close()


def test_launch_opens_the_app_on_a_module_in_this_process():
    """``cnnviz.launch(module, ...)`` (what a notebook calls): the app serves, with the module in the picker;
    Gradio's own launch keywords pass through (``inline=False`` here: no notebook to draw in)."""
    import httpx

    import cnnviz
    from cnnviz import loading

    from .conftest import _free_port

    port = _free_port()
    demo = cnnviz.launch(custom_net.build(), input_size=custom_net.INPUT_SIZE, labels=custom_net.LABELS,
                         name="launched-net", port=port, inline=False, quiet=True)
    try:
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=60).text
        assert '"module/launched-net"' in config and "launched-net · module" in config
        assert cnnviz.load_model("module/launched-net").input_size == custom_net.INPUT_SIZE
    finally:
        demo.close()
        loading.clear_modules()
