"""Every torchvision classification model: models beyond the size cap are refused with a sentence; every
other one lists its layers, and every listed layer gives a square map of the shape it was listed with;
one model of each family (each set of module types) draws its first, a middle and its last layer.

Only structure is checked for all 80, so their models are built on the meta device (shapes, no data: no
random init, no arithmetic) and run at the input size the library's own preprocessing gives. The real
path, random weights through :func:`cnnviz.feature_maps`, runs for the smallest model of each family that
``tests/test_models.py`` does not already draw (it takes every curated model through every view)."""
from __future__ import annotations

import contextlib
import functools
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz import loading, preprocess, pretrained
from cnnviz.layers import find_layers

TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)

# The smallest model of each family (set of module types) that no curated model belongs to; the test
# below fails when torchvision adds a family that is missing here.
DRAWN = [
    "efficientnet_v2_s",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
    "swin_t",
    "swin_v2_t",
    "vgg11_bn",
    "vit_b_32",
]


def _published_params(name: str) -> int:
    """The parameter count torchvision publishes with the model's default weights (no download)."""
    return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


def _over_the_cap(name: str) -> bool:
    return _published_params(name) > loading.MAX_PARAMS


@contextlib.contextmanager
def _initialisers_skipped():
    """torch.nn.init's in-place initialisers leave their tensor as it is (its values are never read)."""
    skip = {n: (lambda tensor, *a, **k: tensor) for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")}
    with mock.patch.multiple(torch.nn.init, **skip):
        yield


@functools.cache
def _on_meta(name: str) -> torch.nn.Module:
    """torchvision's own builder with random weights, built on the meta device, in eval mode.

    RegNet builders compute their widths with ``.tolist()``, which a meta tensor cannot answer: those
    are built on the CPU with the initialisers skipped, then moved to meta."""
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
    except NotImplementedError:  # "Cannot copy out of meta tensor"
        with _initialisers_skipped():
            model = torchvision.models.get_model(name, weights=None).to("meta")
    return model.eval()


def _family(model: torch.nn.Module) -> frozenset[str]:
    return frozenset(type(m).__name__ for m in model.modules())


# The inner loop (-m "not slow") keeps one model per layout: NCHW, tokens, channels-last, a RegNet (built
# off meta); the 80 together take about a minute.
INNER_LOOP = {"resnet18", "vit_b_32", "swin_t", "regnet_x_400mf"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in INNER_LOOP else pytest.mark.slow) for n in TORCHVISION_MODELS]
)
def test_torchvision_model_lists_square_maps_of_its_listed_shapes(name, coffee):
    if _over_the_cap(name):
        with pytest.raises(cnnviz.InvalidOptionError, match="parameters"):
            cnnviz.load_model(name, "random")
        return
    loading.check_size(cnnviz.get_spec(name))  # within the cap: the library would load it
    default = torchvision.models.get_model_weights(name).DEFAULT
    transform, input_size = pretrained.torchvision_transform(default)
    x = transform(preprocess.open_image(coffee)).unsqueeze(0)
    assert tuple(x.shape) == (1, *input_size) and input_size[1] == input_size[2]

    model = _on_meta(name)
    found = {layer.name: layer for layer in find_layers(model, input_size, "meta").layers}
    assert found, name
    drawn: dict[str, tuple[int, ...]] = {}

    def on_output(layer: str, _inputs, output) -> None:
        drawn.setdefault(layer, tuple(found[layer].to_chw(output).shape))  # the first call is the one drawn

    with cnnviz.forward_hooks(model, list(found), on_output), torch.no_grad():
        logits = model(x.to("meta"))
    assert tuple(logits.shape) == (1, len(default.meta["categories"]))
    assert drawn == {n: layer.shape for n, layer in found.items()}
    assert all(h == w for _, h, w in drawn.values()), name  # a square input gives square maps


@pytest.mark.slow
def test_each_family_has_a_model_drawn_here_or_in_test_models():
    curated = {_family(_on_meta(n)) for n in cnnviz.list_models(source="torchvision")}
    drawn = {_family(_on_meta(n)) for n in DRAWN}
    within = [n for n in TORCHVISION_MODELS if not _over_the_cap(n)]
    missing = [n for n in within if _family(_on_meta(n)) not in curated | drawn]
    assert not missing, f"no model of these families is drawn: add the smallest to DRAWN ({missing})"
    assert len(drawn) == len(DRAWN) and not drawn & curated, "DRAWN holds two of a family, or a curated one's"


@pytest.mark.slow
@pytest.mark.parametrize("name", DRAWN)
def test_torchvision_model_draws_first_middle_and_last_layer(name, coffee):
    loading.clear_cache()  # one model in memory at a time
    try:
        loaded = cnnviz.load_model(name, "random")
        assert loaded.input_size[1] == loaded.input_size[2]
        found = cnnviz.list_layers(loaded)
        assert found, name
        # last first: that pass gives the predictions; the other two stop early
        for layer in (found[-1], found[0], found[len(found) // 2]):
            view = cnnviz.feature_maps(name, coffee, layer.name, weights="random")
            c, h, w = view.maps.shape
            assert (c, h, w) == layer.shape and h == w, layer.label  # a square input gives square maps
            assert view.image.dtype == np.uint8 and view.image.ndim == 3 and view.image.shape[2] == 3
            assert torch.isfinite(view.maps).all(), layer.label
    finally:
        loading.clear_cache()
