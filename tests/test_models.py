"""Every curated model builds with random weights and goes through all three views."""
from __future__ import annotations

import pytest
import torch

import cnnviz
from cnnviz import loading, preprocess, registry


@pytest.mark.parametrize(
    "name",  # the inner loop (-m "not slow") keeps one: the app's smallest everyday model
    [pytest.param(n, marks=() if n == "resnet18" else pytest.mark.slow) for n in registry.list_models()],
)
def test_curated_model_through_every_view(name, coffee):
    loaded = cnnviz.load_model(name, "random")
    assert not loaded.model.training
    assert loaded.categories is not None and len(loaded.categories) == 1000

    summary = cnnviz.architecture(name, "random", depth=2)
    assert summary.total_params == sum(p.numel() for p in loaded.model.parameters())
    assert summary.total_macs > 0 and summary.input_size == loaded.input_size

    grid = cnnviz.filter_grid(name, "random")
    assert grid.filters.weight.ndim == 4 and grid.image.ndim == 3

    found = cnnviz.list_layers(loaded)
    assert found and all(len(info.shape) == 3 for info in found)
    first = cnnviz.feature_maps(name, coffee, None, "random")
    assert first.layer.name == grid.filters.layer  # default layer: the first convolution
    assert tuple(first.maps.shape) == first.layer.shape
    assert len(first.predictions) == 5 and sum(p.probability for p in first.predictions) <= 1.0001
    last = cnnviz.feature_maps(name, coffee, found[-1].name, "random")
    assert tuple(last.maps.shape) == found[-1].shape and torch.isfinite(last.maps).all()
    middle = found[len(found) // 2]  # served from the pass kept by the switch above
    kept = cnnviz.feature_maps(name, coffee, middle.name, "random")
    x = preprocess.to_input(loaded, preprocess.open_image(coffee))
    with cnnviz.capture(loaded.model, [middle], stop_early=True) as one:  # the pass need not go past it
        cnnviz.run(loaded.model, x)
    torch.testing.assert_close(kept.maps, one[middle.name])
    loading.clear_cache()
