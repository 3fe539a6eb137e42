"""What the app shows equals what the network computes, checked by independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnviz
from cnnviz import preprocess


def _input(name: str, path) -> tuple[cnnviz.LoadedModel, torch.Tensor]:
    loaded = cnnviz.load_model(name, "random")
    return loaded, preprocess.to_input(loaded, preprocess.open_image(path))


def test_alexnet_maps_equal_the_sliced_network(coffee):
    loaded, x = _input("alexnet", coffee)
    view = cnnviz.feature_maps("alexnet", coffee, "features.3", "random")
    with torch.no_grad():
        reference = loaded.model.features[:4](x.clone())[0]
    torch.testing.assert_close(view.maps, reference)
    # and the picture is drawn from exactly those numbers: a signed conv output in colours centred on
    # zero (matplotlib's coolwarm, computed here independently of render's lookup table)
    from matplotlib import colormaps

    assert view.colormap == "coolwarm" and float(reference.min()) < 0
    layout = view.layout
    factor = layout.tile_w // 27
    for c in (0, 5, 63):
        y, x = layout.origin(c)
        tile = view.image[y : y + layout.tile_h : factor, x : x + layout.tile_w : factor].astype(int)
        values = reference[c].numpy()
        unit = 0.5 + values / (2 * np.abs(values).max())
        expected = np.round(colormaps["coolwarm"](np.round(unit * 255).astype(int))[..., :3] * 255).astype(int)
        assert np.abs(tile - expected).max() <= 1, c


def test_resnet_block_maps_equal_a_hand_written_forward(coffee):
    loaded, x = _input("resnet18", coffee)
    m = loaded.model
    view = cnnviz.feature_maps("resnet18", coffee, "layer1.1.conv2", "random")
    with torch.no_grad():
        h = m.maxpool(torch.relu(m.bn1(m.conv1(x))))
        block0 = m.layer1[0]
        h = torch.relu(block0.bn2(block0.conv2(torch.relu(block0.bn1(block0.conv1(h))))) + h)
        b1 = m.layer1[1]
        reference = b1.conv2(torch.relu(b1.bn1(b1.conv1(h))))[0]
    torch.testing.assert_close(view.maps, reference, rtol=1e-4, atol=1e-4)


def test_predictions_equal_softmax_of_the_full_forward(coffee):
    loaded, x = _input("resnet18", coffee)
    view = cnnviz.feature_maps("resnet18", coffee, "layer2", "random")
    with torch.no_grad():
        probs = torch.softmax(loaded.model(x), 1)[0]
    top = probs.topk(5)
    assert [p.label for p in view.predictions] == [loaded.categories[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([p.probability for p in view.predictions], top.values.numpy(), rtol=1e-5)
    # a second layer on the same image reuses the predictions and still shows the right maps
    again = cnnviz.feature_maps("resnet18", coffee, "layer1", "random")
    assert again.predictions == view.predictions and tuple(again.maps.shape) == (64, 56, 56)


def test_top_channels_are_the_strongest(coffee):
    view = cnnviz.feature_maps("resnet18", coffee, "layer3", "random", channels="top", n=8)
    means = view.maps.mean(dim=(1, 2))
    assert view.channels.tolist() == means.topk(8).indices.tolist()


@pytest.mark.slow
def test_layer_switches_show_every_layer_exactly(coffee):
    """After the first switch every layer comes from one kept pass; each must equal its own capture."""
    from cnnviz import activations, explore

    loaded, x = _input("resnet18", coffee)
    cnnviz.feature_maps("resnet18", coffee, "layer1", "random")  # new image: predictions known
    for layer in cnnviz.list_layers(loaded):
        view = cnnviz.feature_maps("resnet18", coffee, layer.name, "random")
        with activations.capture(loaded.model, [layer]) as one:
            activations.run(loaded.model, x)
        torch.testing.assert_close(view.maps, one[layer.name], msg=layer.name)
    assert explore.KEPT.nbytes <= explore.KEPT.budget


def test_per_layer_scale_does_not_depend_on_how_many_channels_are_drawn(coffee):
    few = cnnviz.feature_maps("resnet18", coffee, "layer1", "random", channels="first", n=4, normalise="layer")
    many = cnnviz.feature_maps("resnet18", coffee, "layer1", "random", channels="first", n=64, normalise="layer")
    lo, hi = float(few.maps.min()), float(few.maps.max())
    assert lo >= 0 and few.colormap == "gray"  # after a ReLU: grey, from the layer's min to its max
    expected = np.rint((few.maps[0, 0, 0].item() - lo) / (hi - lo) * 255)
    for view in (few, many):
        y, x = view.layout.origin(0)
        assert view.image[y, x, 0] == expected
