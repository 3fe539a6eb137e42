"""The shell's handlers without a browser: deep links (one load, sentences for a bad link), a model typo,
Architecture row clicks, the readable table, and what the API page documents."""
from __future__ import annotations

import importlib
import inspect
from types import SimpleNamespace

import gradio as gr
import pytest

import cnnviz
from cnnviz import explore, ui

arch = importlib.import_module("cnnviz.ui.architecture")  # the module (cnnviz.ui.architecture is also the handler)


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    """Every gr.Warning the handlers raise, in order."""
    said: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: said.append(message))
    return said


@pytest.fixture
def no_default_model(monkeypatch):
    """A deep link must not open the default model first: make that an error."""
    def refuse():
        raise AssertionError("the default model was opened")

    monkeypatch.setattr(explore, "startup_model", refuse)


def link(**params) -> SimpleNamespace:
    return SimpleNamespace(query_params=params)  # what open_page reads of a gr.Request


def opened(out: tuple) -> SimpleNamespace:
    """open_page's answer by name (its order: see its docstring)."""
    names = ["key", "weights", "tabs", "tab", "banner", "notice", "shown", "refresh", "photo", "maps_photo",
             "attr_photo", "cmp_photo", "layer", "channel", "filters_layer", "attr_link", "compare", "collection"]
    assert len(out) == len(names)
    return SimpleNamespace(**dict(zip(names, out)))


def skipped(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_deep_link_opens_model_layer_and_tab_without_the_default_model(warnings, no_default_model):
    out = opened(ui.open_page(link(model="ResNet18", layer="layer3.0.conv1", tab="feature-maps", weights="random")))
    assert (out.key, out.weights.value, out.tab, out.shown, out.refresh, out.compare) == ("resnet18", "random", "feature-maps", "resnet18", True, {})
    assert out.tabs.selected == "feature-maps" and out.banner == ""
    assert "ResNet-18" in out.notice and "Random weights, as chosen" in out.notice
    expected = [(info.label, info.name) for info in cnnviz.list_layers(cnnviz.load_model("resnet18", "random"))]
    assert out.layer.value == "layer3.0.conv1" and [tuple(c) for c in out.layer.choices] == expected
    assert out.channel is None and out.attr_link == {} and all(map(skipped, (out.photo, out.maps_photo, out.cmp_photo)))
    assert not warnings


def test_deep_link_to_filters_sets_the_convolution(warnings, no_default_model):
    out = opened(ui.open_page(link(model="resnet18", layer="layer2.0.conv2", tab="filters", weights="random")))
    assert out.tab == "filters" and out.layer.value == "layer2.0.conv2" and out.filters_layer == "layer2.0.conv2"
    out = opened(ui.open_page(link(model="resnet18", layer="layer2.0.bn2", tab="filters", weights="random")))
    assert skipped(out.filters_layer)  # not a convolution
    assert warnings == ["The link's layer 'layer2.0.bn2' is not a convolution; Filters shows the first one."]


def test_deep_link_holds_the_photo_the_channel_and_the_attribution_view(warnings, no_default_model):
    """An example photo goes in every tab's box and stays in the link; Feature maps' channel and the
    Attribution view (method, class, layer) are handed to their tabs."""
    from cnnviz.ui.common import EXAMPLE_FILES

    coffee = next(str(p) for p in EXAMPLE_FILES if p.stem == "coffee")
    out = opened(ui.open_page(link(model="resnet18", weights="random", photo="Coffee", tab="feature-maps",
                                   layer="layer2.0.conv1", channel="12")))
    assert (out.photo, out.maps_photo, out.attr_photo, out.cmp_photo) == ("coffee", coffee, coffee, coffee)
    assert out.channel == 12 and out.layer.value == "layer2.0.conv1"
    out = opened(ui.open_page(link(model="resnet18", weights="random", tab="attribution", method="layercam",
                                   **{"class": "tabby"}, layer="layer3")))
    assert out.attr_link == {"method": "layercam", "class": "tabby", "layer": "layer3"}
    assert out.layer.value == "conv1" and out.channel is None  # the layer is Attribution's, not Feature maps'
    assert not warnings
    out = opened(ui.open_page(link(model="resnet18", weights="random", photo="/etc/passwd", channel="x", tab="feature-maps")))
    assert skipped(out.maps_photo) and skipped(out.photo) and out.channel is None
    assert warnings[0].startswith("The link's photo '/etc/passwd' is not one of the examples (")
    assert "an uploaded photo cannot travel in a link" in warnings[0]
    assert warnings[1] == "The link's channel 'x' is not a channel number (0, 1, …)."


def test_attribution_applies_its_link_once_with_sentences_for_mistakes(warnings):
    from cnnviz.ui import attribution

    out = attribution.refresh("resnet18", "random", None, "gradcam", "", "", 0.5,
                              {"method": "gradcampp", "class": "281", "layer": "layer3"})
    layers, labels, method, link, *_ = out
    assert (layers.value, labels.value, method, link) == ("layer3", "281", "gradcampp", {})
    out = attribution.refresh("resnet18", "random", None, "gradcam", "", "", 0.5,
                              {"method": "magic", "class": "no such class", "layer": "fc"})
    layers, labels, method, link, *_ = out
    assert method == "gradcam" and labels.value == "" and layers.value != "fc" and link == {}
    assert [w.split(" is not")[0] for w in warnings] == ["The link's method 'magic'", "The link's layer 'fc'",
                                                         "The link's class 'no such class'"]


def test_a_bad_link_gets_sentences_and_the_page_still_opens(warnings, monkeypatch):
    started = []
    monkeypatch.setattr(explore, "startup_model", lambda: started.append(1) or explore.Startup("resnet18", None))
    out = opened(ui.open_page(link(model="resnet5O", layer="layer9", tab="weights", weights="random")))
    assert out.key == "resnet18" and started == [1]  # the default opens instead, once
    assert out.tab == "architecture" and out.layer.value == "conv1"
    assert warnings[0].startswith("The link's tab 'weights' is not one of: architecture, filters, feature-maps, attribution, compare, collection.")
    assert warnings[1].startswith("The link's model: Unknown model 'resnet5O'.") and "resnet50" in warnings[1]
    assert warnings[2].startswith("The link's layer: ResNet-18 has no layer 'layer9'") and warnings[2].endswith("Showing conv1.")


def test_link_parameters_are_bounded_text():
    params = ui.link_params(link(model=" resnet18 ", layer="x" * 5000, b="y" * 5000, other="ignored"))
    empty = {k: "" for k in ("model", "layer", "tab", "weights", "photo", "channel", "method", "class", "b", "bweights", "view", "collection")}
    assert params == {**empty, "model": "resnet18", "layer": "x" * ui.LINK_LIMIT, "b": "y" * ui.LINK_LIMIT}
    assert ui.link_params(None) == empty


def test_a_model_typo_puts_the_shown_model_back_and_refreshes_nothing(warnings):
    box, notice, layer, shown, refresh, _ = ui.model_picked("resnet5O", "random", "", "resnet18")
    assert box == "resnet18" and refresh is False  # the box shows the model the page shows
    assert warnings and "Did you mean: resnet50" in warnings[0]
    box, notice, layer, shown, refresh, _ = ui.model_picked("ResNet18", "random", "features.3", "alexnet")
    assert (box, shown, refresh, layer.value) == ("resnet18", "resnet18", True, "conv1")  # AlexNet's layer: not in ResNet
    box, notice, layer, shown, refresh, _ = ui.model_picked("resnet34", "random", "layer3.0.conv1", "resnet18")
    assert layer.value == "layer3.0.conv1"  # the new model has it: the same layer, to compare the two
    box, notice, layer, shown, refresh, _ = ui.weights_switched("resnet18", "random", "layer2.0.conv1", "resnet18")
    assert layer.value == "layer2.0.conv1"  # a weights switch keeps the layer


def test_guarded_refresh_changes_nothing_unless_asked():
    calls = []
    tab = ui.Refresh(lambda a, b: calls.append((a, b)) or ("x", "y"), dict(inputs=[1, 2], outputs=[3, 4], concurrency_id="work"))
    event = ui.when(gr.State(False), tab)
    assert event["fn"]("a", "b", False) == (gr.skip(), gr.skip()) and not calls
    assert event["fn"]("a", "b", True) == ("x", "y") and calls == [("a", "b")]
    assert list(inspect.signature(event["fn"]).parameters) == ["a", "b", "refresh"]  # named in sentences


def row(*cells) -> SimpleNamespace:
    return SimpleNamespace(row_value=list(cells))  # what open_row reads of a gr.SelectData


def test_a_row_click_opens_its_layer_or_says_why_not():
    tabs, tab, maps_layer, filters_layer, note, go = ui.open_row(
        "resnet18", "random", "feature-maps", row("\u2003\u2003layer2.0.conv1", "Conv2d", "128×28×28"))
    assert (tabs.selected, tab, maps_layer, go) == ("feature-maps", "feature-maps", "layer2.0.conv1", True)
    assert note == "Opened `layer2.0.conv1` (Conv2d) in **Feature maps**."
    *_, note, go = ui.open_row("resnet18", "random", "feature-maps", row("fc", "Linear", "1×1000"))
    assert not go and note.startswith("`fc` (Linear) gives no map of the image to draw (its output is 1×1000)")
    tabs, tab, _, filters_layer, note, go = ui.open_row("resnet18", "random", "filters", row("\u2003layer3.1.conv2", "Conv2d", ""))
    assert (tabs.selected, tab, filters_layer, go) == ("filters", "filters", "layer3.1.conv2", False)
    *_, note, go = ui.open_row("resnet18", "random", "filters", row("layer1.0", "BasicBlock", "64×56×56"))
    assert note == ("`layer1.0` (BasicBlock) is not a convolution, so it has no filters to show. "
                    "Convolutions inside it: `layer1.0.conv1`, `layer1.0.conv2`.")


def test_the_page_table_is_readable_and_highlights_the_current_layer():
    summary = cnnviz.architecture("timm/resnet50.a1_in1k", "random", 3)
    totals, styler, csv_path, text = arch.architecture_page("timm/resnet50.a1_in1k", "random", 3, "layer1.0.conv1")
    frame = styler.data
    kept = [r for r in summary.rows if r.type != "Identity"]
    assert len(kept) < len(summary.rows) and len(frame) == len(kept)  # Identity rows left out
    assert list(frame["layer"]) == ["\u2003" * (r.depth - 1) + r.name for r in kept]  # indented by depth
    assert list(frame["params"]) == [r.params for r in kept]  # still numbers
    meta = gr.Dataframe(interactive=False).postprocess(styler).metadata
    at = next(i for i, r in enumerate(kept) if r.name == "layer1.0.conv1")
    assert meta["display_value"][at][5] == f"{kept[at].params:,}" and "," in meta["display_value"][0][6]
    assert [i for i, styles in enumerate(meta["styling"]) if any(styles)] == [at]  # that row only
    # the endpoint keeps the library's rows as they are
    _, table, _, _ = arch.architecture("timm/resnet50.a1_in1k", "random", 3)
    assert list(table["layer"]) == [r.name for r in summary.rows]


def test_the_api_page_documents_free_text_names_and_local_examples():
    info = ui.build_demo().get_api_info()["named_endpoints"]
    assert {"/architecture", "/filters", "/feature_maps"} <= set(info)
    for name, endpoint in info.items():
        params = {p["parameter_name"]: p for p in endpoint["parameters"]}
        models = [p for n, p in params.items() if n == "model" or n.startswith("model_")]  # /compare: model_a, model_b
        assert models or name == "/atlas_job", name  # a job's id is all /atlas_job takes
        for model in models:
            assert model["python_type"]["type"] == "str", name  # not Literal[the curated keys]
            assert "timm/<name>" in model["type"]["description"]
        if "layer" in params:
            assert params["layer"]["python_type"]["type"] == "str", name  # not an empty Literal[]
        for p in endpoint["parameters"]:
            assert "http" not in str(p["example_input"]), (name, p["example_input"])  # nothing to fetch
        labels = [r["label"] for r in endpoint["returns"]]
        assert labels and not any(label.startswith("value_") for label in labels), (name, labels)
