"""The live webcam in a real browser: Chromium's fake camera (``--use-fake-device-for-media-stream
--use-fake-ui-for-media-stream``: a synthetic moving picture, permission granted) streams into the
Feature maps tab of the app as a user starts it.

``test_webcam_stream_updates_maps_and_top5`` — on the Feature maps tab, opening "Live webcam", granting
the camera and pressing Record makes the live grid change at least twice (new ``src`` each time: the
maps follow the camera), each grid arrives inline as a JPEG ``data:`` URL (no file on the server), the
top-5 shows five classes, the caption names the layer the tab has chosen, and no error about the camera or its frames appears.
Screenshots: ``test-artifacts/test_webcam_stream_updates_maps_and_top5/``.
"""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .conftest import CHROMIUM, CHROMIUM_ARGS, page_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@pytest.fixture
def camera_page(chromium, app_url, request):
    """A page in a Chromium of its own, launched with a fake camera (``chromium`` checks it exists)."""
    browser = chromium.browser_type.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + FAKE_CAMERA)
    try:
        with page_in(browser, request) as page:
            yield page
    finally:
        browser.close()


def grid_src(page) -> str | None:
    return page.evaluate("document.querySelector('#webcam-maps img')?.src ?? null")


def test_webcam_stream_updates_maps_and_top5(camera_page, app_url):
    page = camera_page
    page.goto(app_url)
    page.wait_for_function("document.querySelector('#weights-notice')?.innerText.includes('·')")
    tab = page.get_by_role("tab", name="Feature maps", exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    layer = page.locator("#layer-select input").input_value()
    assert layer, "the Feature maps tab chose no layer"

    page.get_by_text("Live webcam").click()
    page.locator("#webcam-input").get_by_text("Click to Access Webcam").click()
    record = page.locator("#webcam-input button[aria-label='capture photo']")
    expect(record).to_be_visible()
    record.click()

    seen: list[str] = []
    page.wait_for_function("document.querySelector('#webcam-maps img')?.src?.startsWith('data:')")
    seen.append(grid_src(page))
    for _ in range(2):  # the maps follow the camera: two more, different grids
        page.wait_for_function("(old) => { const s = document.querySelector('#webcam-maps img')?.src; return s && s !== old; }",
                               arg=seen[-1])
        seen.append(grid_src(page))
    assert len(set(seen)) == 3
    assert all(src.startswith("data:image/jpeg;base64,") for src in seen), [src[:40] for src in seen]

    expect(page.locator("#webcam-predictions")).to_contain_text("%")
    caption = page.inner_text("#webcam-caption")
    assert f"{layer.split(' ·')[0]} · " in caption, (layer, caption)  # the tab's layer, e.g. conv_stem
    assert "ms per frame" in caption
    page.screenshot(path=str(page.artifacts / "01-streaming.png"), full_page=True)
    expect(page.locator("#webcam-predictions button.confidence-set")).to_have_count(5)
    toasts = page.locator(".toast-body").all_inner_texts()
    assert not [t for t in toasts if any(w in t.lower() for w in ("camera", "frame", "live"))], toasts
    record.click()  # stop the stream: its slot is free for the next user
    assert not page.page_errors, page.page_errors
