"""One page state in Chromium (screenshots: ``test-artifacts/<test name>/``).

* ``test_one_upload_serves_every_tab`` — a photo uploaded once in Feature maps is the photo of Attribution and
  Compare (each tab draws it without a second upload); an example picked in Compare goes back to Feature maps and
  into the address bar (``photo=coffee``), an upload does not (it cannot travel in a link). Normal, 390 px, dark.
* ``test_the_address_bar_holds_the_attribution_view_and_a_link_reproduces_it`` — Attribution's method and layer
  follow into the URL; that URL with a class added opens, in a new page, the map of that method, class and layer
  on the same example photo.
* ``test_a_feature_maps_link_with_a_channel_opens_that_channel`` — a Feature maps link's channel opens.
"""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from .conftest import EXAMPLES
from .test_browser import error_toasts, open_tab, wait_text
from .test_browser_shell import open_link, query, wait_query

pytestmark = pytest.mark.e2e

TIMEOUT = 120_000


def test_one_upload_serves_every_tab(browser_page: Page, app_url, shot):
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random", tab="feature-maps")
    page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    wait_text(page, "#maps-caption", startswith="conv1", timeout=TIMEOUT)
    assert "photo" not in query(page)  # an upload cannot go in a link
    joins = []  # the page's calls from here on
    page.on("request", lambda request: joins.append(request.url) if "/queue/join" in request.url else None)
    open_tab(page, "Attribution")  # no second upload: the tab already drew the map of the same photo
    wait_text(page, "#attr-caption", contains="Grad-CAM", timeout=TIMEOUT)
    expect(page.locator("#attr-image img")).to_be_visible()
    # A page at rest sends nothing (a photo that came while the tab was not drawn once re-ran it for ever, ~5
    # calls a second). A call still chained to the drawing may come late on a busy machine: wait for a quiet
    # second first (a page that never goes quiet fails here), then 3 s more must bring nothing.
    first, start = len(joins), time.monotonic()
    settled, quiet_since = first, start
    while time.monotonic() - quiet_since < 1.0:
        assert time.monotonic() - start < 30, f"{len(joins) - first} calls in 30 s after the map was drawn: the page never rests"
        page.wait_for_timeout(200)
        if len(joins) != settled:
            settled, quiet_since = len(joins), time.monotonic()
    page.wait_for_timeout(3000)
    assert len(joins) == settled, f"{len(joins) - settled} calls after the page came to rest"
    open_tab(page, "Compare")
    wait_text(page, "#cmp-caption", startswith="A:", timeout=TIMEOUT)
    expect(page.locator("#cmp-a-0 img")).to_be_visible()
    shot("compare-from-the-feature-maps-upload")

    page.locator(".gallery-item:visible").filter(has=page.locator("img[src*='coffee']")).first.click()  # Compare's example
    wait_query(page, photo="coffee", tab="compare")
    open_tab(page, "Feature maps")
    wait_text(page, "#maps-caption", startswith="conv1", timeout=TIMEOUT)
    expect(page.locator("#input-image img")).to_have_attribute("src", re.compile("coffee"))
    wait_query(page, photo="coffee", tab="feature-maps")
    shot("feature-maps-from-the-compare-example")
    page.set_viewport_size({"width": 390, "height": 844})
    shot("feature-maps-390")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert not error_toasts(page) and not page.problems.page_errors


def test_the_address_bar_holds_the_attribution_view_and_a_link_reproduces_it(browser_page: Page, app_url, shot):
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random", photo="coffee", tab="attribution")
    wait_text(page, "#attr-caption", contains="Grad-CAM", timeout=TIMEOUT)
    page.get_by_label("LayerCAM").check()
    wait_text(page, "#attr-caption", contains="LayerCAM", timeout=TIMEOUT)
    wait_query(page, model="resnet18", weights="random", photo="coffee", tab="attribution", method="layercam")
    link = query(page)
    assert link["layer"] == "layer4"  # the default target layer: the last map before pooling
    shot("attribution-in-the-address-bar")

    fresh = page.context.new_page()  # the recipient, with a class added to the link
    fresh.goto(page.url + "&class=tabby")
    again = wait_text(fresh, "#attr-caption", startswith="LayerCAM for tabby", contains="class 281,", timeout=TIMEOUT)
    assert f"at {link['layer']}" in again  # the link's method, class and layer
    expect(fresh.get_by_role("radio", name="LayerCAM")).to_be_checked()
    expect(fresh.locator("#attr-image img")).to_have_attribute("src", re.compile("coffee"))
    assert not error_toasts(fresh)

    fresh.close()

    page.emulate_media(color_scheme="dark")
    page.goto(page.url + "&class=tabby&__theme=dark")
    wait_text(page, "#attr-caption", contains="class 281,", timeout=TIMEOUT)
    shot("attribution-dark")


def test_a_feature_maps_link_with_a_channel_opens_that_channel(browser_page: Page, app_url, shot):
    """The link's channel waits for the photo (the first refresh runs before the photo box is filled)."""
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random", photo="coffee", tab="feature-maps",
              layer="layer2.0.conv1", channel="5")
    caption = wait_text(page, "#channel-caption", startswith="Channel 5 ", timeout=TIMEOUT)
    assert "layer2.0.conv1" in caption
    expect(page.locator("#channel-number input")).to_have_value("5")
    wait_query(page, model="resnet18", tab="feature-maps", channel="5", photo="coffee")
    assert not error_toasts(page)
    shot("channel-from-link")
