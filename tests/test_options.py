"""Out-of-range options sent straight to the operations get a sentence naming what is valid."""
from __future__ import annotations

import pytest

import cnnviz
from cnnviz.errors import CnnvizError, InvalidOptionError, UnknownLayerError


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda img: cnnviz.architecture("resnet18", "random", depth=0), "Depth must be"),
        (lambda img: cnnviz.architecture("resnet18", "random", depth=99), "Depth must be"),
        (lambda img: cnnviz.filter_grid("resnet18", "random", normalise="max"), "use one of"),
        (lambda img: cnnviz.feature_maps("resnet18", img, "layer1", "random", channels="few"), "channel selection"),
        (lambda img: cnnviz.feature_maps("resnet18", img, "layer1", "random", channels="top", n=0), "a whole number from 1 to 4096"),
        (lambda img: cnnviz.feature_maps("resnet18", img, "layer1", "random", channels="top", n=10**9), "a whole number from 1 to 4096"),
        (lambda img: cnnviz.feature_maps("resnet18", img, "layer1", "random", colormap="jet"), "colormap"),
        (lambda img: cnnviz.feature_maps("resnet18", img, "layer1", "random", normalise="global"), "normalisation"),
        (lambda img: cnnviz.feature_maps("resnet18", img, "layer1", "imagenet"), "pretrained"),
    ],
)
def test_bad_options(coffee, call, message):
    with pytest.raises(InvalidOptionError, match=message):
        call(coffee)


@pytest.mark.parametrize("layer", ["layer9", "fc", "layer1.0.conv1; import os", "../layer1"])
def test_unknown_or_non_spatial_layers(coffee, layer):
    with pytest.raises(UnknownLayerError, match="has no layer"):
        cnnviz.feature_maps("resnet18", coffee, layer, "random")


def test_close_layer_names_are_suggested(coffee):
    with pytest.raises(UnknownLayerError, match="layer1.0.conv1"):
        cnnviz.feature_maps("resnet18", coffee, "layer1.0.conv", "random")


def test_every_user_error_is_one_family():
    assert issubclass(UnknownLayerError, CnnvizError) and issubclass(InvalidOptionError, CnnvizError)
