"""UI handlers without a browser: error mapping and the files handed to Gradio."""
from __future__ import annotations

import gradio as gr
import pytest

from cnnviz import ui
from tests.conftest import EXAMPLES


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ui.filters("no_such_net", "random"), "Unknown model"),
        (lambda: ui.feature_maps("resnet18", None, "", "random"), "No image given"),
        (lambda: ui.feature_maps("resnet18", str(EXAMPLES / "cat.png"), "fc", "random"), "has no layer"),
        (lambda: ui.architecture("resnet18", "random", 0), "Depth must be"),
    ],
)
def test_user_mistakes_become_gr_error_sentences(call, message):
    with pytest.raises(gr.Error, match=message):
        call()


def test_handlers_return_files_and_captions():
    image, labels, caption = ui.feature_maps("resnet18", str(EXAMPLES / "cat.png"), "layer1.0.conv1", "random", "top", 8)
    assert image.endswith(".jpg") and len(labels) == 5
    assert caption.startswith("`layer1.0.conv1` · Conv2d · 64×56×56 — in layer1.0 (BasicBlock) · stride 4 · receptive field 19×19 px")
    assert "the 8 channels of 64 with the highest mean" in caption and "resized and cropped to 224×224" in caption
    png, caption = ui.filters("resnet18", "random", "filter")
    assert png.endswith(".png") and "64 filters of 3×7×7" in caption and "each filter's own range" in caption


def test_the_page_says_when_the_top5_comes_from_an_untrained_network():
    from cnnviz.ui.feature_maps import show

    cat = str(EXAMPLES / "cat.png")
    labels = show("resnet18", cat, "layer1", "random", "first", 8, "gray", "channel", None, 0.5)[1]
    assert "untrained" in labels.label and len(labels.value["confidences"]) == 5
    labels = show("timm/tf_efficientnet_lite0", str(EXAMPLES / "coffee.png"), "", "pretrained", "first", 8, "gray", "channel", None, 0.5)[1]
    assert labels.label == "Top-5 predictions" and labels.value["label"] == "espresso"


def test_repeated_labels_stay_apart_in_the_label_dict():
    from cnnviz.activations import Prediction

    top = [Prediction("crane", 0.5, 134), Prediction("crane", 0.3, 517), Prediction("tabby", 0.1, 281)]
    assert ui.common.label_dict(top) == {"crane (class 134)": 0.5, "crane (class 517)": 0.3, "tabby": 0.1}
    assert ui.common.label_dict([]) is None


@pytest.mark.parametrize("bad", [None, "lots", float("nan")])
def test_non_numbers_for_numeric_options_are_a_sentence(bad):
    with pytest.raises(gr.Error, match="must be a whole number"):
        ui.architecture("resnet18", "random", bad)
    with pytest.raises(gr.Error, match="must be a whole number"):
        ui.feature_maps("resnet18", str(EXAMPLES / "cat.png"), "layer1", "random", "top", bad)

