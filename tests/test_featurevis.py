"""Feature visualisation (cnnviz.featurevis, explore.channel_visualization): reproducible, leaves the
shared model exactly as it was (hooks, modes, requires_grad, .grad), also when it raises; excites its
channel far more than the example photos do; works on channels-last layers; bad options are sentences."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnviz import explore, featurevis, layers, loading, preprocess
from cnnviz.cancel import Stopped, stop_when
from cnnviz.errors import InvalidOptionError, UnknownLayerError
from cnnviz.loading import load_model

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "examples").iterdir() if p.suffix in (".png", ".jpg"))
LITE0 = "timm/tf_efficientnet_lite0"  # bundled ImageNet weights: the same numbers in every process


def _state(model: torch.nn.Module):
    """Everything a request could leave behind on a shared model."""
    return (
        [(name, m.training, len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()],
        [(name, p.requires_grad, p.grad) for name, p in model.named_parameters()],
        {name: p.detach().clone() for name, p in list(model.named_parameters())[:5]},
    )


def _assert_unchanged(model, before):
    modules, params, values = _state(model)
    assert modules == before[0]
    assert [(n, r) for n, r, _ in params] == [(n, r) for n, r, _ in before[1]]
    assert all(g is None for _, _, g in params)
    assert all(torch.equal(values[k], before[2][k]) for k in values)


def test_same_seed_same_image_other_seed_other_image():
    a = explore.channel_visualization("resnet18", "layer1", 3, steps=3, weights="random", seed=11)
    loading.load_model("resnet18", "random").derived.pop("featurevis.cache")  # really compute it again
    b = explore.channel_visualization("resnet18", "layer1", 3, steps=3, weights="random", seed=11)
    c = explore.channel_visualization("resnet18", "layer1", 3, steps=3, weights="random", seed=12)
    assert a is not b and np.array_equal(a.image, b.image) and a.activation == b.activation
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (128, 128, 3) and a.image.dtype == np.uint8 and a.size == (128, 128)
    assert explore.channel_visualization("resnet18", "layer1", 3, steps=3, weights="random", seed=12) is c  # cached


def test_the_shared_model_comes_out_unchanged_also_when_it_raises():
    model = load_model("resnet18", "random").model
    model.layer1[0].train()  # a module's own flag, to be restored as it was
    model.fc.weight.requires_grad_(False)  # a frozen parameter stays frozen
    try:
        before = _state(model)
        steps = []
        explore.channel_visualization("resnet18", "layer2.0.conv1", 1, steps=2, weights="random",
                                      progress=lambda i, n: steps.append((i, n)))
        assert steps == [(1, 2), (2, 2)]
        _assert_unchanged(model, before)

        def fail(i, n):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            explore.channel_visualization("resnet18", "layer2.0.conv1", 2, steps=2, weights="random", progress=fail)
        _assert_unchanged(model, before)
        with stop_when(lambda: "gone"), pytest.raises(Stopped):
            explore.channel_visualization("resnet18", "layer2.0.conv1", 3, steps=2, weights="random")
        _assert_unchanged(model, before)
    finally:
        model.layer1[0].eval()
        model.fc.weight.requires_grad_(True)


def test_works_under_inference_mode_and_no_grad():
    """Also when the model is first built inside the caller's inference mode (it is then cached): its
    parameters must not be inference tensors, or every later gradient view of it fails."""
    loading.clear_cache()
    with torch.inference_mode(), torch.no_grad():
        view = explore.channel_visualization("resnet18", "layer1", 0, steps=2, weights="random", seed=5)
    assert np.isfinite(view.activation)
    model = load_model("resnet18", "random").model
    assert not any(p.is_inference() for p in model.parameters())
    again = explore.channel_visualization("resnet18", "layer1", 0, steps=2, weights="random", seed=5)
    np.testing.assert_array_equal(again.image, view.image)


@pytest.mark.slow
def test_the_generated_image_excites_its_channel_far_more_than_the_photos():
    loaded = load_model(LITE0, "pretrained")
    layer, channel = "blocks.3.1.bn1", 7  # a middle layer (after BatchNorm + ReLU6)
    view = explore.channel_visualization(LITE0, layer, channel, steps=32, weights="pretrained")
    info = layers.get_layer(loaded, layer)
    photos = [featurevis.channel_activation(loaded.model, info, channel, preprocess.to_input(loaded, preprocess.open_image(p)))
              for p in EXAMPLES]
    assert len(photos) == 5
    ratios = [view.activation / p for p in photos]
    assert all(p > 0 for p in photos) and min(ratios) > 2, (view.activation, photos)
    assert view.activation == pytest.approx(featurevis.channel_activation(  # measured on the final uint8 image
        loaded.model, info, channel, featurevis.normalise(torch.from_numpy(view.image).permute(2, 0, 1)[None] / 255.0,
                                                          preprocess.normalisation(loaded.transform))), rel=1e-5)


def test_a_channels_last_layer_works():
    loaded = load_model("timm/convnext_tiny", "random")
    info = layers.get_layer(loaded, "stages.1.blocks.0")
    assert info.layout in ("NCHW", "NHWC")
    norm = next(layer for layer in layers.list_layers(loaded) if layer.layout == "NHWC")
    view = explore.channel_visualization("timm/convnext_tiny", norm.name, 5, steps=2, weights="random")
    assert view.image.shape == (128, 128, 3) and np.isfinite(view.activation)


def test_a_token_layer_and_a_windowed_model_run_at_their_own_input_size():
    vit = load_model("timm/vit_tiny_patch16_224", "random")
    tokens = next(layer for layer in layers.list_layers(vit) if layer.layout == "tokens")
    view = explore.channel_visualization("timm/vit_tiny_patch16_224", tokens.name, 1, steps=1, weights="random")
    assert view.size == (224, 224) and np.isfinite(view.activation)


def test_the_fourier_image_is_a_valid_picture_and_the_transform_keeps_its_size():
    g = torch.Generator().manual_seed(0)
    image = featurevis.FourierImage.random(40, 30, g)
    x = image.rgb()
    assert x.shape == (1, 3, 40, 30) and bool(((x > 0) & (x < 1)).all())
    moved = featurevis.random_transform(x, g)
    assert moved.shape == x.shape and bool(((moved >= 0) & (moved <= 1)).all())
    assert image.scale.max() == pytest.approx(40)  # 1/frequency, capped at the lowest frequency 1/max(h, w)


@pytest.mark.parametrize("kwargs, hint", [
    (dict(channel=64), "Channel must be a whole number from 0 to 63 (layer1 has 64 channels), not 64."),
    (dict(channel=-1), "from 0 to 63"),
    (dict(channel=1.5), "whole number"),
    (dict(channel=True), "whole number"),
    (dict(channel="3"), "whole number"),
    (dict(steps=0), "Steps must be a whole number from 1 to 2048"),
    (dict(steps=5000), "from 1 to 2048"),
    (dict(steps=float("nan")), "Steps must be"),
    (dict(seed=-3), "Seed must be a whole number from 0 to 4294967295"),
    (dict(seed=0.5), "Seed must be"),
])
def test_bad_options_get_a_sentence(kwargs, hint):
    args = dict(model="resnet18", layer="layer1", channel=0, steps=2, weights="random", seed=0) | kwargs
    with pytest.raises(InvalidOptionError, match=None) as e:
        explore.channel_visualization(**args)
    assert hint in str(e.value)


def test_an_unknown_layer_gets_close_matches():
    with pytest.raises(UnknownLayerError, match="layer1"):
        explore.channel_visualization("resnet18", "layer1.9", 0, steps=2, weights="random")
