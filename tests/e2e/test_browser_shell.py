"""The shell in Chromium: deep links, the address bar following the view, Architecture row clicks,
Depth on Enter, and a model typo (screenshots: ``test-artifacts/<test name>/``).

* ``test_deep_link_opens_model_layer_and_tab`` — ``?model=resnet18&layer=layer3.0.conv1&tab=feature-maps``
  opens ResNet-18 on the Feature maps tab with that layer chosen (the gradio#12246 situation: new
  choices and value together inside a Tab), no start-up banner, no error; also at 390×844.
* ``test_bad_deep_link_gets_sentences_not_a_dead_page`` — an unknown model and layer in the URL give
  warning toasts with the usual sentences and the page opens the default model.
* ``test_address_bar_follows_model_layer_and_tab`` — picking a layer, switching tab and typing a model
  rewrite the URL; opening that URL in a new page shows the same view.
* ``test_row_click_opens_layer_in_feature_maps_or_filters`` — a row click opens its layer in Feature
  maps (and the row is highlighted back in the table), a conv row opens Filters, a non-map row says why.
* ``test_depth_enter_applies_and_a_typo_is_put_back`` — a number typed in Depth + Enter changes the
  table; ``resnet5O`` + Enter puts the shown model back in the box with a warning, no error toast.
"""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Page, expect

from .test_browser import error_toasts, open_tab, page_rows, type_model_name, wait_table_rows, wait_text

pytestmark = pytest.mark.e2e


def query(page: Page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def wait_query(page: Page, **expected: str) -> None:
    """Wait until the address bar's parameters include ``expected``."""
    page.wait_for_function(
        """want => { const q = new URLSearchParams(location.search);
                     return Object.entries(want).every(([k, v]) => q.get(k) === v); }""",
        arg=expected,
    )


def warnings_shown(page: Page) -> list[str]:
    return [t.strip() for t in page.locator(".toast-body.warning [data-testid=toast-text]").all_inner_texts()]


def layer_box(page: Page, root: str = "#layer-select") -> str:
    return page.locator(f"{root} input[role=combobox]").input_value()


def open_link(page: Page, url: str, **params: str) -> None:
    page.goto(url + "?" + "&".join(f"{k}={v}" for k, v in params.items()))
    wait_text(page, "#weights-notice", contains="·")


def click_row(page: Page, name: str) -> None:
    """Find the row through the table's search box (the grid is virtualised) and click its name."""
    page.locator("#arch-table input[placeholder='Search...']").fill(name)
    page.locator("#arch-table [role=gridcell]").filter(has_text=name).first.click()


def test_deep_link_opens_model_layer_and_tab(browser_page: Page, app_url, library, server, shot):
    page = browser_page
    log_start = len(server.log_text())
    open_link(page, app_url, model="resnet18", layer="layer3.0.conv1", tab="feature-maps", weights="random")
    expect(page.get_by_role("tab", name="Feature maps", exact=True)).to_have_attribute("aria-selected", "true")
    label = next(info.label for info in library.layers("resnet18") if info.name == "layer3.0.conv1")
    expect(page.locator("#layer-select input[role=combobox]")).to_have_value(label)
    notice = wait_text(page, "#weights-notice", contains="resnet18")
    assert "Random weights, as chosen" in notice
    expect(page.get_by_role("radio", name="random", exact=True)).to_be_checked()
    expect(page.get_by_label("Model", exact=True)).to_have_value("ResNet-18 · torchvision")
    assert page.inner_text("#startup-banner").strip() == ""  # the default model was not opened first
    wait_text(page, "#maps-caption", startswith="Upload a photo")
    shot("deep-link")
    assert not error_toasts(page) and not page.problems.page_errors
    assert "not in the list of choices" not in server.log_text()[log_start:]

    page.set_viewport_size({"width": 390, "height": 844})
    open_link(page, app_url, model="resnet18", layer="layer3.0.conv1", tab="feature-maps", weights="random")
    expect(page.locator("#layer-select input[role=combobox]")).to_have_value(label)
    shot("deep-link-390x844")


def test_bad_deep_link_gets_sentences_not_a_dead_page(browser_page: Page, app_url, library, shot):
    page = browser_page
    open_link(page, app_url, model="resnet5O", layer="nope")
    wait_text(page, "#arch-totals", contains="parameters")
    page.wait_for_function("() => document.querySelectorAll('.toast-body.warning').length >= 1")
    said = " ".join(warnings_shown(page))
    assert "The link's model: Unknown model 'resnet5O'" in said and "resnet50" in said
    shot("bad-model-link")
    assert not error_toasts(page)

    open_link(page, app_url, model="resnet18", layer="layer9.0.conv1", tab="feature-maps", weights="random")
    page.wait_for_function("() => [...document.querySelectorAll('.toast-body.warning')].some(t => t.innerText.includes('layer9'))")
    said = " ".join(warnings_shown(page))
    assert "ResNet-18 has no layer 'layer9.0.conv1'" in said and "Showing conv1." in said
    expect(page.locator("#layer-select input[role=combobox]")).to_have_value(library.layers("resnet18")[0].label)
    shot("bad-layer-link")


def test_address_bar_follows_model_layer_and_tab(browser_page: Page, app_url, library, shot):
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random")
    wait_query(page, model="resnet18", layer="conv1", tab="architecture", weights="random")
    open_tab(page, "Feature maps")
    wait_query(page, tab="feature-maps")
    box = page.locator("#layer-select input[role=combobox]")
    box.click()
    box.press("Control+a")
    box.press_sequentially("layer2.1.conv2", delay=10)
    box.press("Enter")
    wait_query(page, layer="layer2.1.conv2", tab="feature-maps")
    type_model_name(page, "timm/resnet18.a1_in1k")
    wait_text(page, "#weights-notice", contains="timm/resnet18.a1_in1k")
    wait_query(page, model="timm/resnet18.a1_in1k", layer="layer2.1.conv2", tab="feature-maps")  # it has that layer too: kept
    assert "timm/resnet18.a1_in1k" in page.url  # "/" stays readable
    shot("url-after-model")
    shared = page.url

    other = page.context.new_page()
    other.goto(shared)
    wait_text(other, "#weights-notice", contains="timm/resnet18.a1_in1k")
    expect(other.get_by_role("tab", name="Feature maps", exact=True)).to_have_attribute("aria-selected", "true")
    label = next(info.label for info in library.layers("timm/resnet18.a1_in1k") if info.name == "layer2.1.conv2")
    expect(other.locator("#layer-select input[role=combobox]")).to_have_value(label)
    expect(other.get_by_role("radio", name="random", exact=True)).to_be_checked()
    other.close()


def test_row_click_opens_layer_in_feature_maps_or_filters(browser_page: Page, app_url, library, shot):
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random")
    wait_table_rows(page, len(page_rows(library.architecture("resnet18", "random", 3))))
    click_row(page, "layer2.0.conv1")
    expect(page.get_by_role("tab", name="Feature maps", exact=True)).to_have_attribute("aria-selected", "true")
    label = next(info.label for info in library.layers("resnet18") if info.name == "layer2.0.conv1")
    expect(page.locator("#layer-select input[role=combobox]")).to_have_value(label)
    wait_query(page, layer="layer2.0.conv1", tab="feature-maps")
    shot("row-opened-feature-maps")

    open_tab(page, "Architecture")
    page.locator("#arch-table input[placeholder='Search...']").fill("layer2.0.conv1")
    page.wait_for_function(
        """() => [...document.querySelectorAll('#arch-table [role=gridcell]')]
                 .some(c => c.innerText.trim() === 'layer2.0.conv1' && (c.getAttribute('style') || '').includes('font-weight'))"""
    )
    shot("row-highlighted")

    click_row(page, "fc")
    wait_text(page, "#arch-link", contains="gives no map of the image")
    expect(page.get_by_role("tab", name="Architecture", exact=True)).to_have_attribute("aria-selected", "true")

    page.get_by_role("radio", name="Filters (convolutions)", exact=True).check()
    click_row(page, "layer1.0")
    wait_text(page, "#arch-link", contains="is not a convolution")
    click_row(page, "layer3.1.conv2")
    expect(page.get_by_role("tab", name="Filters", exact=True)).to_have_attribute("aria-selected", "true")
    page.wait_for_function("() => document.querySelector('#filters-layer input[role=combobox]').value.startsWith('layer3.1.conv2')")
    wait_text(page, "#filters-caption", startswith="layer3.1.conv2")
    wait_query(page, layer="layer3.1.conv2", tab="filters")
    shot("row-opened-filters")
    assert not error_toasts(page) and not page.problems.page_errors


def test_depth_enter_applies_and_a_typo_is_put_back(browser_page: Page, app_url, library, shot):
    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random")
    wait_table_rows(page, len(page_rows(library.architecture("resnet18", "random", 3))))
    depth = page.locator("#arch-depth input[type=number]")
    depth.click()
    depth.press("Control+a")
    depth.press_sequentially("1")
    depth.press("Enter")
    wait_table_rows(page, len(page_rows(library.architecture("resnet18", "random", 1))))
    expect(depth).to_have_value("1")
    shot("depth-1")

    type_model_name(page, "resnet5O")
    page.wait_for_function("() => document.querySelectorAll('.toast-body.warning').length >= 1")
    assert any("Unknown model 'resnet5O'" in t for t in warnings_shown(page))
    expect(page.get_by_label("Model", exact=True)).to_have_value("ResNet-18 · torchvision")  # not the typo
    notice = page.locator("#weights-notice")
    expect(notice).to_contain_text("resnet18")
    assert not error_toasts(page)
    assert not page.locator("#weights-notice .error, #weights-notice ~ * .error").count()  # no Error badge
    wait_query(page, model="resnet18")
    shot("typo-put-back")
