"""Every torchvision classification model, with random weights, lists its layers and draws its first,
a middle and its last layer as square maps; models beyond the size cap are refused with a sentence."""
from __future__ import annotations

import numpy as np
import pytest
import torchvision

import cnnviz
from cnnviz import loading

TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)


def _published_params(name: str) -> int:
    """The parameter count torchvision publishes with the model's default weights (no download)."""
    return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_model_draws_first_middle_and_last_layer(name, coffee):
    loading.clear_cache()  # one model in memory at a time
    try:
        if _published_params(name) > loading.MAX_PARAMS:
            with pytest.raises(cnnviz.InvalidOptionError, match="parameters"):
                cnnviz.load_model(name, "random")
            return
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
    finally:
        loading.clear_cache()
