"""Which map to trust, against the real app: /explanation_quality over raw HTTP serves the library's
scores, hostile payloads get sentences (and the server lives), and in Chromium the Attribution tab's
"Which map to trust" ranks the maps and plots the curves, and the sanity check shows its numbers."""
from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from .conftest import ARTIFACTS, EXAMPLES
from .test_browser import open_app, open_tab, type_model_name, wait_image, wait_text
from .test_public_link import assert_sentence, assert_served

pytestmark = pytest.mark.e2e

MODEL = "timm/tf_efficientnet_lite0"  # the bundled pretrained weights: the same numbers in both processes
COFFEE = str(EXAMPLES / "coffee.png")


def test_the_endpoint_serves_the_librarys_scores(raw):
    import cnnviz.explore as explore

    status, (table, deletion, insertion, caption) = raw.call(
        "explanation_quality", [MODEL, {"path": COFFEE}, "", "", "pretrained", ["gradcam", "guided_gradcam"]])
    assert status == "complete", table
    truth = explore.explanation_quality(MODEL, COFFEE, methods=["gradcam", "guided_gradcam"])
    rows = table["data"]
    assert [row[1] for row in rows] == [truth.scores[m].name for m in truth.ranking]
    for row, m in zip(rows, truth.ranking, strict=True):
        s = truth.scores[m]
        assert row[2:] == pytest.approx([s.deletion, s.insertion, s.average_drop, s.increase_in_confidence], abs=2e-3)
    assert "espresso" in caption and "Best on this photo" in caption and "Pretrained weights" in caption
    assert table["headers"][2:] == ["deletion AUC ↓", "insertion AUC ↑", "Average Drop ↓", "Increase in Confidence ↑"]
    for plot in (deletion, insertion):
        assert len(plot["data"]) == 2 * 21  # two methods, S + 1 = 21 points each


@pytest.mark.parametrize(("data", "words"), [
    ([MODEL, {"path": COFFEE}, "", "", "pretrained", ["nope"]], "nope"),
    ([MODEL, {"path": COFFEE}, "", "", "pretrained", ["rollout"]], "vision transformer"),  # an attention method for a CNN
    ([MODEL, {"path": COFFEE}, "", "", "pretrained", 5], ""),
    ([MODEL, {"path": COFFEE}, "", "", "pretrained", ["gradcam"] * 100_000], ""),
    ([MODEL, {"path": COFFEE}, "espreso", "", "pretrained", ["gradcam"]], "espresso"),
    ([MODEL, {"path": COFFEE}, "9" * 400, "", "pretrained", ["gradcam"]], "range"),
    ([MODEL, {"path": COFFEE}, "", "blocks.99", "pretrained", ["gradcam"]], "blocks.99"),
    ([MODEL, {"path": COFFEE}, "", "", "trained-ish", ["gradcam"]], ""),
    ([MODEL, {"path": "/etc/passwd"}, "", "", "pretrained", ["gradcam"]], ""),
    ([MODEL, 3.5, "", "", "pretrained", ["gradcam"]], ""),
    (["resnet18"], ""),  # the other parameters missing
])
def test_hostile_payloads_get_sentences(raw, data, words):
    outcome = raw.call("explanation_quality", data)
    if outcome[0] == "refused":  # turned away before the queue (a malformed body): a sentence too
        assert outcome[1]
    else:
        assert_sentence(outcome, *([words] if words else []))
    assert_served(raw)


def test_which_map_to_trust_in_the_browser(browser_page: Page, start, shot):
    # A server of its own with a long request budget: four maps are ~160 passes, and on a machine whose
    # neighbours are busy the budget (rightly) refuses them; the refusal is tested in tests/test_quality.py.
    app = start(env={"CNNVIZ_REQUEST_S": "1200"}).serving()
    page = browser_page
    open_app(page, app.url)
    open_tab(page, "Attribution")
    page.locator("#attr-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    wait_text(page, "#attr-caption", contains="Grad-CAM for")
    wait_image(page, "#attr-overlay")
    page.locator("#attr-quality").get_by_text("Which map to trust", exact=False).first.click()
    page.locator("#attr-quality-button").click()
    caption = wait_text(page, "#attr-quality-caption", contains="Best on this photo", timeout=400_000)
    assert "4 maps" in caption and "Pretrained weights" in caption
    table = page.locator("#attr-quality-table")
    expect(table).to_contain_text("Guided Grad-CAM")
    expect(table).to_contain_text("lower is better")  # the arrows are explained above the table
    for plot in ("#attr-quality-deletion", "#attr-quality-insertion"):
        expect(page.locator(f"{plot} canvas, {plot} svg").first).to_be_visible(timeout=30_000)
    page.locator("#attr-quality").scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the plots' drawing animation
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#attr-quality").screenshot(path=str(ARTIFACTS / "quality.png"))
    shot("which-map-to-trust")
    page.locator("#attr-sanity-button").click()
    numbers = wait_text(page, "#attr-random-caption", contains="Spearman", timeout=120_000)
    assert "SSIM" in numbers and "Random weights, as chosen" in numbers
    assert "trust" in numbers  # what a high value means
    shot("sanity-check-numbers")

    type_model_name(page, "timm/vit_tiny_patch16_224")  # a ViT: no method picked scores its attention methods
    wait_text(page, "#attr-caption", contains="Attention rollout for")
    page.locator("#attr-quality-button").click()
    caption = wait_text(page, "#attr-quality-caption", contains="from its attention", timeout=400_000)
    assert "2 maps" in caption and "Random weights" in caption
    expect(table).to_contain_text("Attention rollout")
    expect(table).to_contain_text("Gradient-weighted rollout")
    shot("which-map-to-trust-vit")
