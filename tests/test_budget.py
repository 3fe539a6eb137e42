"""The per-request budget (cnnviz.budget): estimates that bound real memory, Score-CAM scaled to smaller
batches with the same map, and over-budget requests refused before any pass with a sentence that says
what would fit. No wall-clock thresholds: time budgets are set from the model's own measured profile."""
from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnviz import budget, explore, layers, preprocess
from cnnviz.attribution import SCORECAM_BATCH, class_activation_map, default_layer
from cnnviz.errors import InvalidOptionError
from cnnviz.loading import load_model

attribution_room = importlib.import_module("cnnviz.attribution")  # cnnviz.attribution is also the view function
ROOT = Path(__file__).resolve().parent.parent
IMAGE = "examples/coffee.png"


@pytest.fixture
def loaded():
    return load_model("resnet18", "random")


@pytest.fixture(autouse=True)
def _profiles_as_taken(monkeypatch):
    """Time budgets here are set from the models' profiles: no refusal may retake them in between."""
    monkeypatch.setattr(budget, "RETIME_AFTER_S", math.inf)


@pytest.fixture
def no_time_limit(monkeypatch):
    """Tests about bytes must not depend on how busy the machine was when the profile was timed."""
    monkeypatch.setattr(budget, "REQUEST_SECONDS", math.inf)


def _spy(monkeypatch, module, name: str) -> list:
    """Record the calls of ``module.name`` (args, kwargs) and still make them."""
    calls, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.slow
def test_estimates_bound_the_measured_memory_within_a_factor_of_four():
    """bench/budget.py measures each heavy request's peak RSS in a fresh process whose allocator returns
    every block over 128 KB when freed (so reuse cannot hide growth: see its docstring for why this
    method). Each estimate must be at least what was measured (it is what the budget trusts) and at
    most 4× it (else the budget refuses what would fit), across families: a plain CNN, depthwise
    convolutions with squeeze-excitation, and a vision transformer."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "budget.py"), "--json", "--models", "resnet18", "efficientnet_b0",
         "timm/vit_tiny_patch16_224"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=True,
    ).stdout
    found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(found) == 15
    for row in found:
        ratio = row["estimated_bytes"] / row["bytes"]
        assert 1.0 <= ratio <= 4.0, row


def test_map_bytes_split_at_a_layer_and_the_profile_is_ordered(loaded):
    found = layers.list_layers(loaded)
    assert budget.map_bytes(loaded) == sum(i.nbytes * i.calls for i in found if not any(
        j.name.startswith(i.name + ".") for j in found))
    layer3 = layers.get_layer(loaded, "layer3")
    assert budget.map_bytes(loaded, before=layer3) + budget.map_bytes(loaded, after=layer3) == budget.map_bytes(loaded)
    profile = budget.forward_profile(loaded)
    assert 0 < profile.reached["layer1"] < profile.reached["layer3"] < profile.reached["layer4"] <= profile.seconds
    assert budget.forward_profile(loaded) is profile  # measured once per loaded model


def test_gradient_cams_keep_the_graph_from_the_layer_on(loaded):
    """An early layer keeps the graph of almost the whole network; the last one almost none."""
    early, last = layers.get_layer(loaded, "layer1"), layers.get_layer(loaded, "layer4")
    graph = {info.name: budget.cam_cost(loaded, info, "gradcam").nbytes - budget.forward_cost(loaded).nbytes
             for info in (early, last)}
    assert graph["layer1"] > 50 * graph["layer4"] > 0


def test_scorecam_in_smaller_batches_gives_the_same_map(monkeypatch, no_time_limit):
    small = load_model("mobilenet_v3_small", "random")
    info = layers.get_layer(small, "features.0")  # 16 channels: 18 passes (hard-swish, squeeze-excitation after)
    x = preprocess.model_input(small, IMAGE).x
    expected = class_activation_map(small, x, "scorecam", None, info)  # the library's default batch (all 16 at once)
    monkeypatch.setattr(budget, "REQUEST_BYTES", budget.cam_cost(small, info, "scorecam", 3).nbytes)
    assert budget.scorecam_batch(small, info) == 3
    calls = _spy(monkeypatch, attribution_room, "class_activation_map")
    view = explore.attribution("mobilenet_v3_small", IMAGE, "scorecam", "", "features.0", "random")
    assert calls[0][0][-1] == 3  # the batch it ran with
    assert view.class_index == expected.class_index
    assert np.allclose(view.map, expected.map.numpy(), rtol=1e-4, atol=1e-6 * float(expected.map.max()))


def test_scorecam_never_goes_below_one_copy_per_pass(loaded, monkeypatch):
    monkeypatch.setattr(budget, "REQUEST_BYTES", 1)
    assert budget.scorecam_batch(loaded, layers.get_layer(loaded, "layer1")) == 1


def test_scorecam_over_the_time_budget_is_refused_with_what_fits(loaded, monkeypatch):
    per_pass = budget.forward_cost(loaded).seconds
    monkeypatch.setattr(budget, "REQUEST_SECONDS", (2 + budget.COPY_TIME_FACTOR * 130.5) * per_pass)  # 2 passes + 130 copies
    calls = _spy(monkeypatch, attribution_room, "class_activation_map")
    with pytest.raises(InvalidOptionError) as e:
        explore.attribution("resnet18", IMAGE, "scorecam", "", "layer4", "random")
    message = str(e.value)
    assert message.startswith("Score-CAM at layer4 of ResNet-18 would run 512 masked copies of the 224×224 input (≈ ")
    assert "pick a layer with at most 130 channels (such as layer2" in message and "use Grad-CAM (≈ " in message
    assert not calls  # refused before any pass
    explore.attribution("resnet18", IMAGE, "gradcam", "", "layer4", "random")  # what the sentence offers does fit


def test_a_gradient_cam_over_the_byte_budget_names_the_first_layer_that_fits(loaded, monkeypatch, no_time_limit):
    layer3 = layers.get_layer(loaded, "layer3")
    monkeypatch.setattr(budget, "REQUEST_BYTES", budget.cam_cost(loaded, layer3, "gradcampp").nbytes)
    with pytest.raises(InvalidOptionError, match=r"^Grad-CAM\+\+ at layer1 of ResNet-18 would keep .*memory, the limit is") as e:
        explore.attribution("resnet18", IMAGE, "gradcampp", "", "layer1", "random")
    named = re.search(r"Grad-CAM\+\+ fits from layer (\S+) on \(the graph is kept from the target layer on\)\.$", str(e.value))[1]
    assert explore.attribution("resnet18", IMAGE, "gradcampp", "", named, "random").layer.name == named
    reached = budget.forward_profile(loaded).reached  # the order the outputs are really made in
    made_before = [i for i in layers.list_layers(loaded) if i.calls == 1 and reached[i.name] < reached[named]]
    just_before = max(made_before, key=lambda i: reached[i.name])
    assert not budget.cam_cost(loaded, just_before, "gradcampp").fits


def test_projection_and_guided_gradcam_over_budget_are_refused(loaded, monkeypatch, no_time_limit):
    layer2 = layers.get_layer(loaded, "layer2")
    monkeypatch.setattr(budget, "REQUEST_BYTES", budget.projection_cost(loaded, layer2).nbytes - 1)
    with pytest.raises(InvalidOptionError, match=r"^A guided backpropagation projection from layer2 of ResNet-18 would keep "
                                                 r"every map .*; no layer choice changes that; Grad-CAM fits \(≈ "):
        explore.projection("resnet18", IMAGE, "layer2", 3, weights="random")
    with pytest.raises(InvalidOptionError, match="^Guided Grad-CAM at layer4 of ResNet-18"):
        explore.guided_gradcam("resnet18", IMAGE, "", "layer4", "random")


def test_featurevis_over_the_time_budget_says_how_many_steps_fit(loaded, monkeypatch):
    info = layers.get_layer(loaded, "layer1")
    step = budget.featurevis_step_cost(loaded, info, (128, 128))
    monkeypatch.setattr(budget, "REQUEST_SECONDS", budget.forward_cost(loaded).seconds + 10.5 * step.seconds)
    assert budget.featurevis_steps(loaded, info, (128, 128)) == 10
    with pytest.raises(InvalidOptionError) as e:
        explore.channel_visualization("resnet18", "layer1", 2, steps=11, weights="random", seed=3)
    assert str(e.value).startswith("Feature visualisation of channel 2 at layer1 of ResNet-18 would take 11 steps at 128×128 (≈ ")
    assert str(e.value).endswith("; at most 10 steps fit.")
    assert explore.channel_visualization("resnet18", "layer1", 2, steps=10, weights="random", seed=3).steps == 10


def test_featurevis_step_too_large_for_memory_asks_for_an_earlier_layer(loaded, monkeypatch, no_time_limit):
    monkeypatch.setattr(budget, "REQUEST_BYTES", 1)
    with pytest.raises(InvalidOptionError, match="memory, the limit is .*; pick an earlier layer.$"):
        explore.channel_visualization("resnet18", "layer4", 2, steps=2, weights="random", seed=4)


def test_compare_checks_both_sides_together(loaded, monkeypatch):
    other = load_model("timm/resnet18", "random")
    side_a = budget.cam_cost(loaded, default_layer(loaded), "gradcam")
    side_b = budget.cam_cost(other, default_layer(other), "gradcam")
    monkeypatch.setattr(budget, "REQUEST_SECONDS", max(side_a.seconds, side_b.seconds) * 1.01)
    monkeypatch.setattr(budget, "REQUEST_BYTES", max(side_a.nbytes, side_b.nbytes))  # sides run one after the other
    with pytest.raises(InvalidOptionError) as e:
        explore.compare("resnet18", "timm/resnet18", IMAGE, "random", "random", "cam")
    assert str(e.value).startswith("Comparing ResNet-18 and resnet18 (Grad-CAM) would run both sides' passes one after the other (≈ ")
    assert "alone fit: open them one at a time, or compare with a smaller model." in str(e.value)


def test_export_over_the_byte_budget_says_how_large_a_layer_fits(loaded, monkeypatch, no_time_limit):
    monkeypatch.setattr(budget, "REQUEST_BYTES", budget.forward_cost(loaded).nbytes + 2 * 2**20)
    with pytest.raises(InvalidOptionError, match=r"^Exporting conv1 of ResNet-18 \(64×112×112 float32\) would hold its "
                                                 r"maps twice .*; export a layer of at most 1 MB\.$"):
        explore.layer_activations("resnet18", IMAGE, "conv1", "random")
    info, maps, _ = explore.layer_activations("resnet18", IMAGE, "layer4", "random")  # 100 KB of maps: fits
    assert tuple(maps.shape) == info.shape


def test_a_refused_request_runs_no_pass(loaded, monkeypatch):
    budget.forward_profile(loaded), default_layer(loaded)  # once per model, before counting
    passes = []
    handle = loaded.model.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        monkeypatch.setattr(budget, "REQUEST_SECONDS", 0.0)
        monkeypatch.setattr(budget, "REQUEST_BYTES", 0)
        for request in (lambda: explore.attribution("resnet18", IMAGE, "gradcam", "", "", "random"),
                        lambda: explore.attribution("resnet18", IMAGE, "scorecam", "", "layer4", "random"),
                        lambda: explore.projection("resnet18", IMAGE, "layer2", 1, weights="random"),
                        lambda: explore.compare("resnet18", "resnet18", IMAGE, "random", "random", "stages")):
            with pytest.raises(InvalidOptionError):
                request()
    finally:
        handle.remove()
    assert not passes


def test_the_default_budgets_let_the_usual_requests_through(loaded, monkeypatch):
    """The default 3 GB: ResNet-18's Grad-CAM at any layer and Score-CAM at the library's own batch fit
    (bytes only: the time depends on the machine)."""
    monkeypatch.setattr(budget, "REQUEST_BYTES", 3072 * 2**20)  # CNNVIZ_REQUEST_MB's default
    assert budget.cam_cost(loaded, layers.get_layer(loaded, "layer1"), "gradcam").nbytes < budget.REQUEST_BYTES
    assert budget.scorecam_batch(loaded, layers.get_layer(loaded, "layer4")) == SCORECAM_BATCH


def test_a_refusal_on_time_retakes_an_old_profile_once_and_keeps_the_faster(loaded, monkeypatch):
    """A profile timed while a neighbour held the cores would refuse what fits: before a refusal on
    time, a profile older than RETIME_AFTER_S is timed again (PROFILE_PASSES passes, nothing else)."""
    default_layer(loaded)
    before = budget.forward_profile(loaded)
    monkeypatch.setattr(budget, "REQUEST_SECONDS", 0.0)
    monkeypatch.setattr(budget, "RETIME_AFTER_S", 0.0)
    passes = []
    handle = loaded.model.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        with pytest.raises(InvalidOptionError, match="the limit is 0.01 s"):
            explore.attribution("resnet18", IMAGE, "gradcam", "", "", "random")
        assert len(passes) == budget.PROFILE_PASSES
        monkeypatch.setattr(budget, "RETIME_AFTER_S", math.inf)  # just retaken: the next refusal runs nothing
        with pytest.raises(InvalidOptionError):
            explore.attribution("resnet18", IMAGE, "gradcam", "", "", "random")
        assert len(passes) == budget.PROFILE_PASSES
    finally:
        handle.remove()
    assert budget.forward_profile(loaded).seconds <= before.seconds
