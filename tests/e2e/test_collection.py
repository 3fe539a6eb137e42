"""Dataset examples in the page and over HTTP, against an app started with a collection (``CNNVIZ_COLLECTIONS``,
what ``cnnviz serve --data faces=DIR`` sets) and a store of its own (``CNNVIZ_DATA_DIR``).

``test_collection_tab_builds_the_atlas_and_opens_an_example`` — resnet18 with random weights, the link's
collection chosen, layer4 only: Build the atlas shows its progress, then the report, the channel table over the
whole collection and the channel's top images; a page at rest sends nothing; clicking the first image opens
Feature maps with that photo at layer4, channel 0, whose "Top 9 images" accordion shows the same channel's
images. Screenshots: ``test-artifacts/test_collection_tab_…/``.

``test_a_path_as_collection_name_is_refused`` — raw HTTP: every endpoint refuses a server path given as the
collection's name, with a sentence that lists the names there are.
"""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.fixtures.collections import make_collection

from .conftest import CHROMIUM, App, Raw, page_in
from .test_browser import open_tab, wait_text

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def collection_app(tmp_path_factory):
    """The app with one collection, "faces" (4 images of each of 3 classes)."""
    root = make_collection(tmp_path_factory.mktemp("faces"), per_class=4)
    store = tmp_path_factory.mktemp("store")
    app = App(tmp_path_factory.mktemp("collection-app"), env={"CNNVIZ_COLLECTIONS": f"faces={root}", "CNNVIZ_DATA_DIR": str(store)})
    try:
        yield app.serving()
    finally:
        app.stop()


@pytest.fixture
def page(chromium, collection_app, request):
    with page_in(chromium, request) as page:
        yield page


def test_collection_tab_builds_the_atlas_and_opens_an_example(page: Page, collection_app):
    assert CHROMIUM.exists()
    shots = iter(range(1, 100))

    def shot(step: str) -> None:
        page.screenshot(path=str(page.artifacts / f"{next(shots):02d}-{step}.png"), full_page=True)

    page.goto(collection_app.url + "?model=resnet18&weights=random&tab=collection&collection=faces")
    wait_text(page, "#weights-notice", contains="·")
    expect(page.get_by_role("tab", name="Collection", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#collection-select input")).to_have_value("faces")
    page.locator("#collection-layers input").click()
    page.locator("#collection-layers input").press_sequentially("layer4", delay=10)
    page.get_by_role("option", name=re.compile(r"^layer4 ·")).click()
    page.keyboard.press("Escape")
    page.locator("#collection-build").click()
    wait_text(page, "#collection-status", startswith="✅", timeout=90_000)
    status = page.inner_text("#collection-status")
    assert "12 images" in status and "layer4" in status, status
    caption = wait_text(page, "#collection-caption", contains="whole collection")
    assert "12 images" in caption and "selectivity" in caption
    expect(page.locator("#collection-layer input")).to_have_value(re.compile("^layer4"))
    expect(page.locator("#collection-table")).to_contain_text("dead over the collection")
    wait_text(page, "#collection-examples-caption", startswith="Channel 0 of layer4")
    expect(page.locator("#collection-gallery img")).to_have_count(9)
    expect(page.locator("#collection-gallery")).to_contain_text(" · ")  # "faces/face_000.png · 1.23"
    shot("collection-built")

    joins: list[str] = []
    page.on("request", lambda r: joins.append(r.url) if "/queue/join" in r.url else None)
    page.wait_for_timeout(3000)
    assert joins == [], f"{len(joins)} calls from a page at rest (the timer must stop when the job is done)"

    page.locator("#collection-gallery img").first.click()
    expect(page.get_by_role("tab", name="Feature maps", exact=True)).to_have_attribute("aria-selected", "true")
    wait_text(page, "#maps-caption", startswith="layer4", timeout=90_000)
    expect(page.locator("#layer-select input")).to_have_value(re.compile("^layer4"))
    expect(page.locator("#channel-number input")).to_have_value("0")
    expect(page.locator("#input-image img")).to_be_visible()
    wait_text(page, "#channel-caption", startswith="Channel 0")
    page.locator("#maps-top-images").get_by_text("Top 9 images in the collection").click()
    wait_text(page, "#maps-top-caption", contains="drive channel 0 of layer4")
    expect(page.locator("#maps-top-gallery img")).to_have_count(9)
    shot("opened-in-feature-maps")
    open_tab(page, "Collection")
    shot("collection-again")
    assert not page.page_errors, page.page_errors


@pytest.mark.parametrize("name", ["/etc", "../x", "faces/.."])
def test_a_path_as_collection_name_is_refused(collection_app, name):
    raw = Raw(collection_app.url)
    for endpoint, data in (("atlas", ["resnet18", "random", name, "layer4", 3]),
                           ("collection_table", ["resnet18", "random", name, "layer4"]),
                           ("dataset_examples", ["resnet18", "random", name, "layer4", 0, 3, "top"])):
        event, message = raw.call(endpoint, data)
        assert event == "error", (endpoint, event, message)
        text = str(message)
        assert "No collection named" in text and "'faces'" in text, (endpoint, text)


@pytest.mark.parametrize("endpoint, data, said", [
    ("atlas", ["resnet18", "random", "faces", "layer4", 10**9], "k"),
    ("atlas", ["resnet18", "random", "faces", ["layer4"] * 3, 3], "layer"),
    ("atlas", ["resnet18", "random", {"path": "/etc"}, "layer4", 3], "collection"),
    ("atlas_job", [12345], "job"),
    ("atlas_job", ["no-such-job"], "No atlas job"),
    ("dataset_examples", ["resnet18", "random", "faces", "layer4", "many", 3, "top"], "channel"),
    ("dataset_examples", ["resnet18", "random", "faces", "layer4", 10**12, 3, "top"], ("from 0 to 511", "No atlas of layer4")),
    ("dataset_examples", ["resnet18", "random", "faces", "layer4", 0, -1, "top"], "k"),
    ("dataset_examples", ["resnet18", "random", "faces", "layer4", 0, 3, "best"], "order"),
    ("collection_table", ["resnet18", "random", "faces"], "Choose a layer"),
])
def test_payloads_the_page_never_sends_get_a_sentence(collection_app, endpoint, data, said):
    """Wrong types, huge values, missing parameters: an error event with a sentence, and the server lives."""
    raw = Raw(collection_app.url)
    event, message = raw.call(endpoint, data)
    said = (said,) if isinstance(said, str) else said  # a range check, or no atlas yet (when this test runs first)
    assert event == "error" and any(words.lower() in str(message).lower() for words in said), (endpoint, event, message)
    assert raw.call("atlas_job", ["still-alive"])[0] == "error"  # answered: the server is up


def _zip(folder, target, extra: dict[str, bytes] | None = None):
    import zipfile

    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*.*")):
            archive.write(path, path.relative_to(folder).as_posix())  # faces/…, not_faces/…, scenes/… at the top
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return target


def test_a_zip_uploaded_in_the_page_is_built_and_its_top_image_opens(page: Page, collection_app, tmp_path):
    """From the upload of a zip to a click on a top image; a hostile zip is refused with the library's sentence."""
    from .test_browser import error_toasts
    from .test_browser_shell import warnings_shown

    folder = make_collection(tmp_path / "mine", per_class=3)
    hostile = _zip(folder, tmp_path / "hostile.zip", {"../escape.png": b"x"})
    page.goto(collection_app.url + "?model=resnet18&weights=random&tab=collection")
    wait_text(page, "#weights-notice", contains="·")
    page.locator("#collection-zip input[type=file]").set_input_files(str(hostile))
    page.wait_for_function("() => document.querySelectorAll('.toast-body.warning').length > 0", timeout=60_000)
    assert any("escape.png" in text and "Nothing was extracted" in text for text in warnings_shown(page)), warnings_shown(page)
    expect(page.locator("#collection-select input")).not_to_have_value(re.compile("^upload/"))

    page.goto(collection_app.url + "?model=resnet18&weights=random&tab=collection")  # a fresh upload box
    wait_text(page, "#weights-notice", contains="·")
    page.locator("#collection-zip input[type=file]").set_input_files(str(_zip(folder, tmp_path / "mine.zip")))
    expect(page.locator("#collection-select input")).to_have_value(re.compile("^upload/"), timeout=60_000)
    page.locator("#collection-layers input").click()
    page.locator("#collection-layers input").press_sequentially("layer4", delay=10)
    page.get_by_role("option", name=re.compile(r"^layer4 ·")).click()
    page.keyboard.press("Escape")
    page.locator("#collection-build").click()
    status = wait_text(page, "#collection-status", startswith="✅", timeout=90_000)
    assert "9 images" in status, status
    expect(page.locator("#collection-gallery img")).to_have_count(9)
    page.screenshot(path=str(page.artifacts / "01-zip-built.png"), full_page=True)
    page.locator("#collection-gallery img").first.click()
    expect(page.get_by_role("tab", name="Feature maps", exact=True)).to_have_attribute("aria-selected", "true")
    wait_text(page, "#maps-caption", startswith="layer4", timeout=90_000)
    expect(page.locator("#input-image img")).to_be_visible()
    assert not error_toasts(page) and not page.page_errors
