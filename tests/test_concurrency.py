"""Requests sharing a model never see each other's activations, predictions or weights."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

import cnnviz
from cnnviz import loading
from tests.conftest import EXAMPLES

PHOTOS = [EXAMPLES / "cat.png", EXAMPLES / "coffee.png", EXAMPLES / "rocket.jpg", EXAMPLES / "astronaut.png"]
LAYERS = ["conv1", "layer1.0.conv2", "layer2", "layer3.1.bn1", "layer4"]


def test_parallel_requests_get_their_own_maps_and_predictions():
    jobs = [(photo, layer) for photo in PHOTOS for layer in LAYERS]
    expected = {job: cnnviz.feature_maps("resnet18", job[0], job[1], "random") for job in jobs}
    # run them again, 4 at a time, in an order that interleaves images and layers on one shared model
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(jobs * 2, pool.map(lambda j: cnnviz.feature_maps("resnet18", j[0], j[1], "random"), jobs * 2)))
    for job in jobs:
        torch.testing.assert_close(got[job].maps, expected[job].maps)
        assert got[job].predictions == expected[job].predictions


def test_summary_while_others_run_forward_passes():
    reference = cnnviz.architecture("resnet18", "random", depth=2)
    loading.load_model("resnet18", "random")

    def summary_again(_):
        from cnnviz import summary

        loaded = loading.load_model("resnet18", "random")
        with loaded.lock:
            return summary.summarize(loaded.model, loaded.input_size, depth=2).total_macs

    with ThreadPoolExecutor(4) as pool:
        maps = [pool.submit(cnnviz.feature_maps, "resnet18", PHOTOS[i % 4], "layer2", "random") for i in range(6)]
        macs = list(pool.map(summary_again, range(4)))
        [m.result() for m in maps]
    assert macs == [reference.total_macs] * 4


def test_weights_choices_are_separate_models():
    trained = loading.load_model("timm/tf_efficientnet_lite0", "pretrained")
    before = trained.model.conv_stem.weight.clone()
    untrained = loading.load_model("timm/tf_efficientnet_lite0", "random")
    assert untrained.model is not trained.model
    assert trained.weights.pretrained and not untrained.weights.pretrained
    torch.testing.assert_close(trained.model.conv_stem.weight, before)
    assert cnnviz.predict("timm/tf_efficientnet_lite0", EXAMPLES / "coffee.png")[0].label == "espresso"
