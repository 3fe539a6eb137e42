"""Issue 17 §7, the items a unit test can hold: what the app says at start-up and in its help."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnnviz import explore

ROOT = Path(__file__).resolve().parents[1]


def test_the_offline_banner_says_so_once():
    """The fallback sentence ends in "…, so the model has random weights."; the banner goes on without a second "So"."""
    opened = explore.startup_model()
    assert opened.notice, "offline, the default model has no pretrained weights: the banner must say so"
    assert len(re.findall(r"\bso\b", opened.notice, flags=re.IGNORECASE)) == 1, opened.notice
    assert opened.model in opened.notice or "opened on" in opened.notice


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_help_and_readme_name_the_same_mcp_url():
    said = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    urls = set(re.findall(r"/gradio_api/mcp/\S*", " ".join(said.split())))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert urls == {"/gradio_api/mcp/"}, urls
    assert "http://127.0.0.1:7860/gradio_api/mcp/" in readme and "/gradio_api/mcp/sse" not in readme
    doc = (ROOT / "app.py").read_text(encoding="utf-8").split('"""')[1]
    assert "/gradio_api/mcp/sse" not in doc and "gradio_api/mcp/" in doc


def test_the_weights_radio_says_random_after_a_fallback():
    """Offline, pretrained ResNet-18 falls back to random weights: the radio's choice says so (its value,
    the user's choice, stays "pretrained"); with weights that did load it says "pretrained" again."""
    from cnnviz import ui

    *_, radio = ui.model_picked("resnet18", "pretrained", "", "")
    labels = dict((value, label) for label, value in radio.choices)
    assert radio.value == "pretrained" and "random weights" in labels["pretrained"] and labels["random"] == "random"
    *_, radio = ui.model_picked("timm/tf_efficientnet_lite0", "pretrained", "", "")  # bundled: really pretrained
    assert dict((value, label) for label, value in radio.choices)["pretrained"] == "pretrained"


def _skipped(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_a_typed_input_channel_the_layer_lacks_is_refused_where_the_caption_is(caplog):
    """Filters' Input channel 9999: the sentence in the caption, the last grid kept, one log line, no reset to -1."""
    import importlib
    import logging

    filters_tab = importlib.import_module("cnnviz.ui.filters")
    caplog.set_level(logging.INFO, logger="cnnviz")
    out = filters_tab.channel_typed("resnet18", "random", "layer", "layer1.0.conv1", 9999)
    assert out[1].startswith("⚠️") and "9999" in out[1] and "0 to 63" in out[1]
    assert all(_skipped(v) for i, v in enumerate(out) if i != 1)  # grid, plots and the box itself unchanged
    said = [r for r in caplog.records if r.name.startswith("cnnviz")]
    assert len(said) == 1 and said[0].levelno == logging.INFO and not said[0].exc_info
    good = filters_tab.channel_typed("resnet18", "random", "layer", "layer1.0.conv1", 5)
    assert not good[1].startswith("⚠️") and good[5].value == 5


def test_a_checkpoint_that_fails_clears_the_previous_report(tmp_path):
    """A failed load says why where the report was; the previous upload's name and its button go."""
    import importlib

    compare_tab = importlib.import_module("cnnviz.ui.compare")
    bogus = tmp_path / "notes.pt"
    bogus.write_bytes(b"not a checkpoint at all")
    out = compare_tab.load_for_page("resnet18", str(bogus), None)
    uploaded, report, *_, use_everywhere = out
    assert uploaded == "" and report.startswith("⚠️") and use_everywhere.visible is False
    assert all(_skipped(v) for v in out[2:5])  # the sides keep their models


def test_an_unknown_layer_keeps_the_feature_maps_shown(caplog):
    import importlib
    import logging

    maps_tab = importlib.import_module("cnnviz.ui.feature_maps")
    caplog.set_level(logging.INFO, logger="cnnviz")
    image = str(ROOT / "examples" / "cat.png")
    out = maps_tab.show("resnet18", image, "layer9", "random", "top", 16, "auto", "channel", None, 0.5)
    assert out[2].startswith("⚠️") and "layer9" in out[2]
    assert all(_skipped(v) for i, v in enumerate(out) if i != 2)
    assert len([r for r in caplog.records if r.name.startswith("cnnviz")]) == 1


def test_dead_only_with_no_dead_channel_is_a_sentence_not_an_empty_picture():
    import importlib

    maps_tab = importlib.import_module("cnnviz.ui.feature_maps")
    image = str(ROOT / "examples" / "cat.png")
    out = maps_tab.show("resnet18", image, "conv1", "random", "dead", 16, "auto", "channel", None, 0.5)
    grid, _, caption = out[:3]
    assert grid.visible is False and grid.value is None  # no big empty rectangle
    assert "no dead channels: every one of the 64 channels has a non-zero value" in caption
    out = maps_tab.show("resnet18", image, "conv1", "random", "top", 16, "auto", "channel", None, 0.5)
    assert out[0].visible is True and out[0].value  # the grid comes back with channels to show


def test_the_upload_name_says_where_a_link_with_it_works(tmp_path):
    """The name goes into the address bar ("Explore it in every tab"): the report says plainly that a link
    with it works on this server only, while the upload is held."""
    import importlib

    import torch
    from torchvision.models import resnet18

    compare_tab = importlib.import_module("cnnviz.ui.compare")
    path = tmp_path / "mine.pt"
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    name, report, *_ = compare_tab.load_for_page("resnet18", str(path), None)
    assert name.startswith("upload/") and "on this server only, while the server holds the upload" in report
    assert "only this page knows" not in report


def test_compare_across_timm_and_torchvision_explains_the_same_class(coffee):
    """timm and torchvision spell 2 of ImageNet's 1,000 labels differently; on one photo B still explains
    A's top class, matched by index."""
    from cnnviz import loading
    from cnnviz.explore.comparison import same_classes

    a, b = loading.load_model("resnet18", "random"), loading.load_model("timm/resnet18", "random")
    assert a.categories != b.categories and same_classes(a.categories, b.categories)
    view = explore.compare("resnet18", "timm/resnet18", str(coffee), "random", "random", "cam")
    pair = view.pairs[0]
    class_a = re.search(r"\(class (\d+),", pair.caption_a).group(1)
    assert re.search(r"\(class (\d+),", pair.caption_b).group(1) == class_a


def test_a_silent_channel_is_said_to_be_silent_not_projected_from_row_0(coffee):
    """A channel zero everywhere on this photo has no strongest unit: the answer says it is silent here."""
    import importlib

    attribution_tab = importlib.import_module("cnnviz.ui.attribution")
    from test_drilldown import alexnet_filter_zeroed

    silent = 7
    with alexnet_filter_zeroed(silent):  # its filter and bias zero: the channel is zero after the ReLU
        view = explore.projection("alexnet", str(coffee), "features.1", silent, weights="random")
        assert view.silent and f"Channel {silent} is silent here" in view.note
        _, caption = attribution_tab.projection("alexnet", str(coffee), "features.1", silent, "guided_backprop", "random")
        assert "is silent here" in caption and "strongest unit" not in caption
    active = explore.projection("alexnet", str(coffee), "features.1", silent, weights="random")
    assert not active.silent and active.activation > 0 and "silent" not in active.note


def test_a_model_without_nn_relu_names_the_activation_it_uses(coffee):
    """MobileNetV2 uses ReLU6: the projection's note names it instead of saying the model has no ReLU."""
    view = explore.projection("mobilenet_v2", str(coffee), "features.2", 0, weights="random")
    assert "ReLU6" in view.note and "no ReLU modules" not in view.note
    assert "plain gradient" in view.note


def test_capture_takes_layer_names_as_well_as_layer_infos(coffee):
    """``cnnviz.capture(model, ["layer1"])``, as torchvision's feature extraction takes names: on a bare
    module and on a loaded model, the same maps as an independent hook on the module."""
    import pytest
    import torch

    import cnnviz

    loaded = cnnviz.load_model("resnet18", "random")
    x = cnnviz.preprocess.to_input(loaded, cnnviz.open_image(str(coffee)))
    seen = []
    handle = loaded.model.layer1.register_forward_hook(lambda _m, _i, out: seen.append(out[0].detach().clone()))
    try:
        with torch.no_grad():
            loaded.model(x)
    finally:
        handle.remove()
    for model in (loaded.model, loaded):
        with cnnviz.capture(model, ["layer1", cnnviz.get_layer(loaded, "layer2")]) as out:
            cnnviz.run(loaded.model, x)
        torch.testing.assert_close(out["layer1"], seen[0])
        assert out["layer2"].shape == (128, 28, 28)
    with pytest.raises(cnnviz.UnknownLayerError, match="layer9"):
        with cnnviz.capture(loaded.model, ["layer9"]):
            pass
