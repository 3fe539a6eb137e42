"""Compare: stages matched by stride across torchvision and timm (checked against timm's own stage
declarations and hand-known names), and each compared view equal to the single view it pairs."""
from __future__ import annotations

import numpy as np
import pytest

import cnnviz
from cnnviz import explore, receptive
from cnnviz.layers import list_layers


@pytest.fixture
def cat(coffee):
    return coffee.parent / "cat.png"


def stages(model: str, declared: bool = True) -> dict[int, str]:
    loaded = cnnviz.load_model(model, "random")
    return {s.stride: s.layer for s in receptive.list_stages(loaded, list_layers(loaded), declared)}


@pytest.mark.parametrize("model, expected", [
    # the paper's conv2_x … conv5_x
    ("resnet18", {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}),
    # ConvNeXt: stages at features.1/3/5/7, each after its downsampling layer (features.2/4/6)
    ("convnext_tiny", {4: "features.1", 8: "features.3", 16: "features.5", 32: "features.7"}),
    # EfficientNet-B0's table: stages 3, 4, 6 end at 1/4, 1/8, 1/16; stage 9 (the 1×1 head) at 1/32
    ("efficientnet_b0", {4: "features.2", 8: "features.3", 16: "features.5", 32: "features.8"}),
])
def test_torchvision_stages_from_the_traced_strides(model, expected):
    assert stages(model) == expected


@pytest.mark.parametrize("model", ["timm/resnet50", "timm/convnext_tiny", "timm/regnety_008", "timm/mobilenetv4_conv_small"])
def test_the_trace_finds_the_stages_timm_declares(model):
    """timm's ``feature_info`` (written by hand per architecture) is an independent reference for the
    traced rule that torchvision models rely on."""
    loaded = cnnviz.load_model(model, "random")
    declared = {f["reduction"]: f["module"] for f in loaded.model.feature_info if f["reduction"] >= 4}
    assert stages(model, declared=False) == declared
    assert stages(model) == declared


def test_efficientnet_trace_and_declaration_differ_only_at_the_head():
    """timm's EfficientNet declares blocks.6 at 1/32 (its detection backbone); the trace takes the 1×1
    head that follows at the same stride, as it does for torchvision's EfficientNet. The app uses the
    declaration for timm models."""
    traced, declared = stages("timm/efficientnet_b0", declared=False), stages("timm/efficientnet_b0")
    assert declared == {4: "blocks.1", 8: "blocks.2", 16: "blocks.4", 32: "blocks.6"}
    assert {k: v for k, v in traced.items() if k != 32} == {k: v for k, v in declared.items() if k != 32}
    assert traced[32] == "bn2"


def test_a_vit_has_only_its_declared_stride():
    assert stages("timm/vit_tiny_patch16_224") == {16: "blocks.11"}


def test_compare_filters_is_each_sides_filter_view(coffee):
    view = explore.compare("resnet18", "resnet18", coffee, "random", "random", "filters")
    (pair,) = view.pairs
    assert np.array_equal(pair.a, explore.filter_grid("resnet18", "random").image)
    assert pair.same_size and pair.caption_a.startswith("conv1 · 64 filters 7×7")
    assert view.a.title == "ResNet-18 · random weights"
    assert [p.index for p in view.a.predictions] == [p.index for p in cnnviz.predict("resnet18", coffee, "random")]


def test_compare_stages_are_the_feature_map_views_of_each_stage(coffee, cat):
    view = explore.compare("resnet18", "timm/resnet18", coffee, "random", "random", "stages", image_b=cat)
    titles = [p.title for p in view.pairs]
    assert titles == ["first convolution"] + [f"stride {s} (1/{s} of the input)" for s in (4, 8, 16, 32)]
    for pair, layer in zip(view.pairs, ["conv1", "layer1", "layer2", "layer3", "layer4"]):
        single_a = explore.feature_maps("resnet18", coffee, layer, "random", channels="top", n=explore.COMPARE_TILES)
        single_b = explore.feature_maps("timm/resnet18", cat, layer, "random", channels="top", n=explore.COMPARE_TILES)
        assert np.array_equal(pair.a, single_a.image) and np.array_equal(pair.b, single_b.image)
        assert pair.caption_a.startswith(f"{layer} · ") and pair.caption_b.startswith(f"{layer} · ")
    assert [p.index for p in view.b.predictions] == [p.index for p in cnnviz.predict("timm/resnet18", cat, "random")]


def test_compare_a_vit_leaves_the_strides_it_lacks_empty(coffee):
    view = explore.compare("timm/vit_tiny_patch16_224", "resnet18", coffee, "random", "random", "stages")
    by_title = {p.title: p for p in view.pairs}
    assert by_title["stride 4 (1/4 of the input)"].caption_a == "no map at this stride"
    assert by_title["stride 16 (1/16 of the input)"].caption_a.startswith("blocks.11 · ")
    assert not by_title["stride 4 (1/4 of the input)"].same_size


@pytest.mark.slow
def test_compare_cam_explains_one_class_on_both_sides():
    lite0 = cnnviz.OFFLINE_MODEL
    view = explore.compare(lite0, lite0, "examples/coffee.png", "pretrained", "random", "cam")
    (pair,) = view.pairs
    truth = explore.attribution(lite0, "examples/coffee.png")
    assert np.array_equal(pair.a, truth.overlay)
    assert pair.caption_a.startswith("Grad-CAM for espresso") and pair.caption_b.startswith("Grad-CAM for espresso")
    assert view.a.predictions[0].label == "espresso"


def test_compare_refuses_an_unknown_view(coffee):
    with pytest.raises(cnnviz.InvalidOptionError, match="filters"):
        explore.compare("resnet18", "resnet18", coffee, "random", "random", "everything")
