"""Issue 17 §7: what a new user met in Chromium and a hostile client met over HTTP, one test each.

Each test drives the real app (the session's server) and says what the page must show instead."""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from .conftest import EXAMPLES
from .test_browser import dropdown_options, error_toasts, wait_text
from .test_browser_shell import open_link, wait_query

pytestmark = pytest.mark.e2e


def error_badges(page: Page) -> int:
    """Gradio's "Error" badges over outputs (a status tracker in its error state)."""
    return page.get_by_text("Error", exact=True).count()


def test_every_row_of_lay_one_over_the_other_opens_its_slider(browser_page: Page, app_url, shot):
    """The picker's choices are set by the comparison: every row, not only the first, is a valid pick
    (the parameter check reads the page's own copy of the dropdown, not the empty one it was built as)."""
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random", tab="compare", view="stages")
    page.locator("#cmp-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    expect(page.locator("#cmp-title-4")).to_contain_text("stride 32", timeout=60_000)
    picker = page.locator("#cmp-pair input[role=combobox]")
    titles = dropdown_options(page, "#cmp-pair")
    assert len(titles) == 5
    for title in titles[1:]:
        picker.click()
        picker.press("Control+a")
        picker.press_sequentially(title, delay=5)  # the list narrows to this row; Enter picks it
        picker.press("Enter")
        expect(page.locator("#cmp-slider")).to_contain_text(title, timeout=30_000)
        expect(page.locator("#cmp-slider img")).to_have_count(2, timeout=30_000)
    shot("lay-one-over-the-other-last-row")
    assert not error_toasts(page) and error_badges(page) == 0


def test_a_link_names_its_tab_in_any_case(browser_page: Page, app_url):
    """Model names ignore case; so do tab names (``?tab=Architecture``, ``?tab=Feature-Maps``)."""
    from .test_browser_shell import warnings_shown

    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random", tab="Feature-Maps")
    expect(page.get_by_role("tab", name="Feature maps", exact=True)).to_have_attribute("aria-selected", "true")
    wait_query(page, tab="feature-maps")
    open_link(page, app_url, model="resnet18", weights="random", tab="Architecture")
    expect(page.get_by_role("tab", name="Architecture", exact=True)).to_have_attribute("aria-selected", "true")
    page.wait_for_timeout(500)  # a warning would be on its way by now
    assert not warnings_shown(page) and not error_toasts(page)


def test_the_console_names_the_apps_own_share_switch(server):
    """Gradio's hint says ``share=True`` (an argument of launch() nobody here calls); the app says --share."""
    said = server.log_text()
    if server.log is None:
        pytest.skip("CNNVIZ_E2E_URL: the server's console is not ours to read")
    assert "Running on local URL" in said and "--share" in said
    assert "share=True" not in said


def test_the_weights_radio_says_random_weights_after_a_fallback(browser_page: Page, app_url):
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="pretrained")  # offline: no download, random weights
    expect(page.locator("#weights-notice")).to_contain_text("random weights")
    fell_back = page.get_by_role("radio", name="pretrained (not available: random weights)", exact=True)
    expect(fell_back).to_be_checked()
    assert page.get_by_role("radio", name="pretrained", exact=True).count() == 0


def _box(page: Page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box, f"{selector} is not shown"
    return box


@pytest.mark.parametrize("width", [1280, 390])
def test_picture_labels_and_buttons_sit_above_the_tiles(browser_page: Page, app_url, width, shot):
    """Gradio floats a picture's label and buttons over it: the page leaves room above the picture, so
    the top row of tiles (and its numbers) stays visible, and on a phone the label and buttons do not meet."""
    page = browser_page
    page.set_viewport_size({"width": width, "height": 900})
    open_link(page, app_url, model="resnet18", weights="random", tab="filters")
    page.wait_for_function("() => { const i = document.querySelector('#filters-image img'); return i && i.naturalWidth > 0; }")
    page.wait_for_timeout(300)  # the picture settles in its box
    label, buttons = _box(page, "#filters-image label[data-testid=block-label]"), _box(page, "#filters-image .icon-button-wrapper")
    picture = page.locator("#filters-image img").evaluate(
        """img => { const r = img.getBoundingClientRect(), k = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
                    const h = img.naturalHeight * k, w = img.naturalWidth * k;  // object-fit: contain
                    return {x: r.x + (r.width - w) / 2, y: r.y + (r.height - h) / 2, width: w, height: h}; }""")
    shot(f"filters-{width}")
    assert label["y"] + label["height"] <= picture["y"] + 1 and buttons["y"] + buttons["height"] <= picture["y"] + 1
    assert label["x"] + label["width"] <= buttons["x"]


def test_score_cam_says_its_cost_first_shows_its_passes_and_a_newer_choice_stops_it(browser_page: Page, app_url, server, shot):
    """Score-CAM at a layer of 128 channels: the caption gives the estimate before the map, the picture
    counts real passes ("pass N of M"), and Grad-CAM chosen meanwhile stops it (the server says
    "superseded") and is drawn without waiting for it."""
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random", tab="attribution")
    page.locator("#attr-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    wait_text(page, "#attr-caption", contains="Grad-CAM for")
    box = page.locator("#attr-layer input[role=combobox]")
    box.click()
    box.press("Control+a")
    box.press_sequentially("layer2", delay=5)
    box.press("Enter")
    wait_text(page, "#attr-caption", contains="at layer2 (")
    page.get_by_role("radio", name="Score-CAM (slow)").check()
    said = wait_text(page, "#attr-caption", contains="Score-CAM at layer2: 128 channels")
    assert "passes" in said and "≈" in said and "MB" in said
    expect(page.locator("#attr-overlay").get_by_text(re.compile(r"Score-CAM: pass \d+ of \d+"))).to_be_visible(timeout=60_000)
    assert "Score-CAM at layer2: 128 channels" in page.inner_text("#attr-caption")  # the estimate stays in view meanwhile
    shot("score-cam-cost-and-progress")
    page.get_by_role("radio", name="Grad-CAM", exact=True).check()
    caption = wait_text(page, "#attr-caption", startswith="Grad-CAM for")
    assert "layer2" in caption
    if server.log is not None:
        deadline = time.monotonic() + 30
        while "superseded" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "show stopped mid-pass: superseded" in server.log_text()
    assert not error_toasts(page) and error_badges(page) == 0
