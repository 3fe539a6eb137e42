"""The Compare tab and its endpoints against the real app: /compare over raw HTTP (the served pictures
are the library's), /load_checkpoint with a real upload (the served filters are the file's weights, a
pickle bomb is refused without running), bad inputs answered with sentences, and the tab in Chromium
including a checkpoint upload."""
from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import Page, expect

from .conftest import EXAMPLES
from .test_browser import error_toasts, fetch_image, open_app, open_tab, wait_text
from .test_public_link import assert_sentence

pytestmark = pytest.mark.e2e

MODEL = "timm/tf_efficientnet_lite0"  # the bundled pretrained weights: the same numbers in both processes
COFFEE = {"path": str(EXAMPLES / "coffee.png")}
CAT = {"path": str(EXAMPLES / "cat.png")}


def picture(raw, item: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw.download(item["image"]))).convert("RGB"))


def test_compare_filters_pretrained_against_random(raw):
    import cnnviz.explore as explore

    status, answer = raw.call("compare", [MODEL, MODEL, COFFEE, "pretrained", "random", "filters"])
    assert status == "complete", answer
    gallery, top_a, top_b, caption = answer
    assert len(gallery) == 2  # one row: A then B
    truth = explore.filter_grid(MODEL, "pretrained").image
    served_a, served_b = picture(raw, gallery[0]), picture(raw, gallery[1])
    assert np.array_equal(served_a, truth)  # PNG: lossless
    assert served_b.shape == truth.shape and not np.array_equal(served_b, truth)
    assert gallery[0]["caption"].startswith("A · first convolution · conv_stem")
    assert top_a["label"] == "espresso" and "Pretrained weights" in caption and "Random weights, as chosen" in caption


def test_compare_stages_matches_by_stride_across_libraries(raw):
    status, answer = raw.call("compare", ["resnet18", "timm/resnet18", COFFEE, "random", "random", "stages"])
    assert status == "complete", answer
    gallery = answer[0]
    captions = [item["caption"] for item in gallery]
    assert len(gallery) == 10  # first convolution and strides 4, 8, 16, 32, for A and B
    for i, (layer, size) in enumerate([("conv1", 112), ("layer1", 56), ("layer2", 28), ("layer3", 14), ("layer4", 7)]):
        for side, caption in zip("AB", captions[2 * i : 2 * i + 2]):
            assert caption.startswith(f"{side} · ") and f" · {layer} · " in caption and f"×{size}×{size}" in caption, caption
        a, b = picture(raw, gallery[2 * i]), picture(raw, gallery[2 * i + 1])
        assert a.shape == b.shape and a.std() > 5  # 16 tiles of the same size on both sides: the slider can wipe


def test_compare_two_photos_through_one_model(raw):
    status, answer = raw.call("compare", [MODEL, MODEL, COFFEE, "pretrained", "pretrained", "cam", CAT])
    assert status == "complete", answer
    gallery, top_a, top_b, caption = answer
    assert top_a["label"] == "espresso" and top_b["label"] != "espresso"
    # two photos: each side explains what the model saw in its own photo
    assert "Grad-CAM for espresso" in gallery[0]["caption"] and f"Grad-CAM for {top_b['label']}" in gallery[1]["caption"]
    status, answer = raw.call("compare", [MODEL, MODEL, COFFEE, "pretrained", "random", "cam"])
    assert status == "complete", answer  # one photo, the same labels: B answers A's question
    assert "Grad-CAM for espresso" in answer[0][0]["caption"] and "Grad-CAM for espresso" in answer[0][1]["caption"]


def test_compare_bad_inputs_are_sentences(raw):
    assert_sentence(raw.call("compare", [MODEL, MODEL, COFFEE, "pretrained", "random", "banana"]), "filters")
    assert_sentence(raw.call("compare", [MODEL, "resnet1800", COFFEE, "pretrained", "random", "filters"]), "resnet18")
    assert_sentence(raw.call("compare", [MODEL, MODEL, None, "pretrained", "random", "filters"]), "image")
    assert_sentence(raw.call("compare", [MODEL, MODEL, COFFEE, "pretrained", "random", "filters", {"path": "/etc/passwd"}]), "uploaded")
    assert_sentence(raw.call("compare", [MODEL, MODEL, COFFEE, "trained", "random", "filters"]), "pretrained")
    assert_sentence(raw.call("compare", [MODEL, "upload/" + "0" * 32, COFFEE, "pretrained", "random", "filters"]), "Upload the file again")


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    """A ResNet-18 state dict with known weights, as safetensors: (path, state)."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(11)
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.linspace(-1, 1, state["conv1.weight"].numel()).reshape(state["conv1.weight"].shape)
    path = tmp_path_factory.mktemp("checkpoints") / "my-resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def test_load_checkpoint_then_filters_show_its_weights(raw, resnet18_checkpoint):
    import cnnviz
    import cnnviz.explore as explore

    path, state = resnet18_checkpoint
    status, (name, report) = raw.call("load_checkpoint", ["resnet18", {"path": raw.upload(path)}, None])
    assert status == "complete", name
    assert re.fullmatch(r"upload/[0-9a-f]{32}", name) and "resnet18" in report
    status, (image, caption) = raw.call("filters", [name, "pretrained", "layer", "", -1])
    assert status == "complete", image
    here = cnnviz.load_checkpoint("resnet18", path)  # this process's own name for the same file
    truth = explore.filter_grid(here.name, "pretrained")
    assert torch.equal(truth.filters.weight, state["conv1.weight"])
    served = np.asarray(Image.open(io.BytesIO(raw.download(image))).convert("RGB"))
    assert np.array_equal(served, truth.image)
    status, answer = raw.call("compare", [name, name, COFFEE, "pretrained", "random", "stages"])
    assert status == "complete", answer
    assert "your checkpoint my-resnet18.safetensors · its weights" in answer[3]
    assert "random weights, not the checkpoint" in answer[3]


class Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this creates the file


def test_a_pickle_that_would_run_code_is_refused_without_running(raw, tmp_path):
    canary = tmp_path / "canary"
    bomb = tmp_path / "weights.pt"
    torch.save({"conv1.weight": Canary(str(canary))}, bomb, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    assert not canary.exists()
    assert_sentence(raw.call("load_checkpoint", ["resnet18", {"path": raw.upload(bomb)}, None]), "pickled", "state_dict")
    assert not canary.exists()
    passwd = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    assert_sentence(raw.call("load_checkpoint", ["resnet18", passwd, None]), "uploaded")
    assert_sentence(raw.call("load_checkpoint", ["resnet18", {"path": raw.upload(bomb)}, passwd]), "uploaded")
    assert_sentence(raw.call("load_checkpoint", ["resnet18", {"url": "data:application/octet-stream;base64,AAAA"}, None]), "uploaded")
    assert_sentence(raw.call("load_checkpoint", ["resnet18", None, None]), "checkpoint")


def row_pictures(page: Page, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``row``'s two pictures as the page shows them, once both are there."""
    pictures = []
    for side in "ab":
        image = page.locator(f"#cmp-{side}-{row} img")
        expect(image).to_be_visible(timeout=60_000)
        pictures.append(fetch_image(page, image.get_attribute("src")))
    return pictures[0], pictures[1]


def test_compare_tab_in_the_browser_with_a_checkpoint_upload(browser_page: Page, app_url, resnet18_checkpoint, shot):
    page = browser_page
    open_app(page, app_url)
    open_tab(page, "Compare")
    expect(page.locator("#cmp-slider")).to_be_hidden()  # nothing to lay over before a photo
    page.locator("#cmp-image input[type=file]").set_input_files(str(EXAMPLES / "coffee.png"))
    caption = wait_text(page, "#cmp-caption", contains="Random weights, as chosen")
    assert "Pretrained weights" in caption and MODEL in caption  # it opens on the model being explored
    a, b = row_pictures(page, 0)
    assert a.shape == b.shape and not np.array_equal(a, b)  # the same filters' layout, trained against random
    expect(page.locator("#cmp-a-0")).to_contain_text("conv_stem")
    expect(page.locator("#cmp-a-1")).to_be_hidden()  # one row for the filters
    expect(page.locator("#cmp-top-a")).to_contain_text("espresso")
    expect(page.locator("#cmp-slider img")).to_have_count(2, timeout=30_000)  # one size: a wipe from A to B
    shot("compare-pretrained-vs-random-filters")

    page.get_by_label("Feature maps at each stage").check()
    wait_text(page, "#cmp-caption", contains="matched by stride")
    expect(page.locator("#cmp-title-4")).to_contain_text("stride 32", timeout=60_000)
    for row, layer in enumerate(["conv_stem", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]):
        expect(page.locator(f"#cmp-a-{row}")).to_contain_text(layer)
        expect(page.locator(f"#cmp-b-{row}")).to_contain_text(layer)
    a, b = row_pictures(page, 2)
    assert a.shape == b.shape and a.std() > 5
    shot("compare-stages")

    page.locator("#cmp-checkpoint").get_by_text("Your own checkpoint").click()
    arch = page.locator("#cmp-arch input")
    arch.fill("resnet18")
    arch.press("Enter")
    page.locator("#cmp-checkpoint-file input[type=file]").set_input_files(str(resnet18_checkpoint[0]))
    page.locator("#cmp-load").click()
    report = wait_text(page, "#cmp-report", contains="upload/")
    name = re.search(r"upload/[0-9a-f]{32}", report).group(0)
    wait_text(page, "#cmp-caption", contains=name)  # the upload went on side B, and B was drawn again
    for row, layer in enumerate(["conv1", "layer1", "layer2", "layer3", "layer4"]):
        expect(page.locator(f"#cmp-b-{row}")).to_contain_text(layer, timeout=60_000)
    a, b = row_pictures(page, 4)
    assert b.std() > 5
    expect(page.locator("#cmp-use")).to_be_visible()
    shot("compare-own-checkpoint")
    page.get_by_label("First-layer filters").check()  # 32 filters 3×3 against 64 of 7×7: no slider, a sentence
    wait_text(page, "#cmp-slider-note", contains="differ in size")
    expect(page.locator("#cmp-slider")).to_be_hidden()
    expect(page.locator("#cmp-b-0")).to_contain_text("conv1 · 64 filters 7×7")
    page.locator("#cmp-use").click()  # the upload in every tab: the model picker shows it
    expect(page.locator("#weights-notice")).to_contain_text(name, timeout=60_000)
    assert not error_toasts(page)


def test_a_link_opens_the_comparison_and_the_address_bar_follows_it(browser_page: Page, app_url, shot):
    from .test_browser_shell import open_link, wait_query

    page = browser_page
    open_link(page, app_url, model="resnet18", weights="random", tab="compare", b="timm/resnet18",
              bweights="random", view="stages")
    expect(page.locator("#cmp-model-b input")).to_have_value(re.compile("resnet18"), timeout=60_000)
    expect(page.get_by_label("Feature maps at each stage")).to_be_checked()
    page.locator("#cmp-image input[type=file]").set_input_files(str(EXAMPLES / "cat.png"))
    caption = wait_text(page, "#cmp-caption", contains="timm/resnet18")
    assert "(resnet18)" in caption and "(timm/resnet18)" in caption
    expect(page.locator("#cmp-title-4")).to_contain_text("stride 32", timeout=60_000)
    page.get_by_label("Grad-CAM").check()
    wait_query(page, model="resnet18", tab="compare", b="timm/resnet18", bweights="random", view="cam")
    shot("compare-linked")
    open_link(page, app_url, model="resnet18", weights="random", tab="compare", b="resnet1800", view="everything")
    expect(page.locator("#cmp-model-a input")).not_to_have_value("", timeout=60_000)
    expect(page.locator(".toast-body.warning").first).to_contain_text("The link's view", timeout=60_000)
    said = " ".join(page.locator(".toast-body.warning").all_inner_texts())
    assert "side B" in said and "resnet18" in said and "The link's view 'everything'" in said
    expect(page.get_by_label("First-layer filters")).to_be_checked()
    assert not error_toasts(page)
