"""Filters: the first conv found generically, the weights the model really uses, tiles from those weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnviz import explore, filters, layers, registry, render


@pytest.mark.parametrize(
    ("model", "first"),
    [("alexnet", "features.0"), ("resnet18", "conv1"), ("mobilenet_v2", "features.0.0"), ("timm/efficientnet_b0.ra_in1k", "conv_stem"), ("timm/cspdarknet53.ra_in1k", "stem.conv1.conv")],
)
def test_first_conv_found_generically(model, first):
    loaded = registry.load_model(model, "random")
    assert layers.first_conv_name(loaded.model) == first
    assert filters.first_layer_filters(loaded).layer == first


def test_plain_conv_weight_is_the_parameter():
    loaded = registry.load_model("alexnet", "random")
    found = filters.first_layer_filters(loaded)
    torch.testing.assert_close(found.weight, loaded.model.features[0].weight.detach())
    assert found.weight.shape == (64, 3, 11, 11)


def test_weight_standardised_conv_shows_the_standardised_kernel():
    from timm.layers import StdConv2d

    torch.manual_seed(0)
    conv = StdConv2d(3, 4, 3, eps=1e-6)
    w = conv.weight.detach()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (w - mean) / torch.sqrt(var + 1e-6)
    got = filters.effective_weight(conv)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, w)


def test_filter_tiles_are_the_weights():
    view = explore.filter_grid("alexnet", "random", "filter")
    w = view.filters.weight[5].numpy()  # filter 5: row 0, column 5 of the 8×8 grid
    size = render.tile_size(64, 11)
    factor, pad = size // 11, max(2, size // 16)
    y, x = 3 * factor, 5 * (factor * 11 + pad) + 7 * factor  # pixel of kernel cell (3, 7)
    expected = np.rint((w[:, 3, 7] - w.min()) / (w.max() - w.min()) * 255)
    np.testing.assert_allclose(view.image[y, x], expected, atol=1)
    assert view.image.shape[0] == view.image.shape[1]  # 64 filters: 8 × 8
