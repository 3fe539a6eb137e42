"""Class activation maps and Zeiler–Fergus projections: faithful to an independent computation, on the
right object, zero outside a unit's receptive field, and leaving the shared model as it was."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import cnnviz
from cnnviz import explore, loading, preprocess
from cnnviz.attribution import (
    CAM_METHODS,
    PROJECTIONS,
    class_activation_map,
    class_index,
    guided_gradcam,
    project,
    upsampled,
)
from cnnviz.errors import CnnvizError, InvalidOptionError, UnknownLayerError
from cnnviz.loading import load_model

LITE0 = "timm/tf_efficientnet_lite0"


def reference_gradcam(model: torch.nn.Module, layer: str, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Grad-CAM from its definition: hook the layer, backprop the class score, weight each map by the
    spatial mean of its gradient, ReLU of the weighted sum; Tensor[h,w]."""
    kept = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: kept.setdefault("a", out))
    try:
        with torch.enable_grad():
            scores = model(x.clone().requires_grad_(True))
            grad, = torch.autograd.grad(scores[0, cls], kept["a"])
    finally:
        handle.remove()
    weights = grad[0].mean(dim=(1, 2))
    return F.relu((weights[:, None, None] * kept["a"][0].detach()).sum(0))


@pytest.mark.parametrize("name, layer", [
    ("resnet18", "layer4"), ("mobilenet_v3_small", "features.12"),
    ("timm/resnet18", "layer4"), ("timm/convnext_tiny", "stages.3"),
])
def test_gradcam_equals_independent_computation(name, layer):
    loaded = load_model(name, "random")
    torch.manual_seed(0)
    x = torch.rand(1, *loaded.input_size)
    with torch.no_grad():
        cls = int(loaded.model(x)[0].argsort()[-2])  # not the top class
    found = class_activation_map(loaded, x, "gradcam", cls, layer)
    expected = reference_gradcam(loaded.model, layer, x, cls)
    assert found.map.shape == expected.shape
    assert torch.allclose(found.map, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()) + 1e-12)
    big = upsampled(found.map, 224, 224)
    ref_big = F.interpolate(expected[None, None], (224, 224), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(big, ref_big, rtol=1e-4, atol=1e-6 * float(ref_big.abs().max()) + 1e-12)
    assert found.class_index == cls and 0 < found.probability < 1


def square(path: str, side: int) -> Image.Image:
    return ImageOps.fit(Image.open(path).convert("RGB"), (side, side))


def test_each_class_map_sits_on_its_object():
    """The coffee photo on the left, the cat on the right (each a 112 px square on a grey 224 px
    picture): the bundled ImageNet model's Grad-CAM for each class puts most of its mass on its side."""
    top = lambda picture: explore.predict(LITE0, picture, k=1)[0]  # noqa: E731
    cup, cat = top(square("examples/coffee.png", 224)), top(square("examples/cat.png", 224))
    assert cup.label == "espresso" and cat.label in {"tabby", "tiger cat", "Egyptian cat"}
    picture = Image.new("RGB", (224, 224), (124, 116, 104))
    picture.paste(square("examples/coffee.png", 112), (0, 56))
    picture.paste(square("examples/cat.png", 112), (112, 56))
    for found, side in ((cup, "left"), (cat, "right")):
        view = explore.attribution(LITE0, np.asarray(picture), "gradcam", found.label)
        assert view.class_index == found.index
        big = np.asarray(upsampled(torch.from_numpy(view.map), 224, 224))
        left = big[:, :112].sum() / big.sum()
        share = left if side == "left" else 1 - left
        assert share > 0.75, (found.label, share)


def model_state(model: torch.nn.Module):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    return hooks, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], \
        [getattr(m, "inplace", None) for m in model.modules()]


def tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5),
    )


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_tiny_net_every_method_and_model_unchanged():
    loaded = load_model("alexnet", "random")
    model = loaded.model
    x = torch.rand(1, 3, 224, 224)
    model.features[3].train()  # a module in its own mode: must come back so
    before = model_state(model)
    params = [p.detach().clone() for p in model.parameters()]
    with torch.inference_mode():
        for method in CAM_METHODS:
            if method == "scorecam":
                found = class_activation_map(loaded, x, method, 1, "features.4")  # 192 channels
            elif method in ("sscam", "iscam"):  # a pass per channel and sample: one sample, 64 channels
                found = class_activation_map(loaded, x, method, 1, "features.1", samples=1)
            else:
                found = class_activation_map(loaded, x, method, 1)
            assert found.map.ndim == 2 and torch.isfinite(found.map).all()
        for method in PROJECTIONS:
            assert torch.isfinite(project(loaded, x, "features.3", 2, method).image).all()
        signal, cam = guided_gradcam(loaded, x, 1)
        assert signal.shape == (3, 224, 224)
    for bad in (lambda: class_activation_map(loaded, x, "nope"), lambda: class_activation_map(loaded, x, "gradcam", 5000),
                lambda: class_activation_map(loaded, x, "gradcam", None, "features.99"),
                lambda: project(loaded, x, "features.3", 999), lambda: class_activation_map(loaded, x[:, :2])):
        with pytest.raises((CnnvizError, RuntimeError)):  # the library's sentence, or torch's refusal of a 2-channel input
            bad()
        assert model_state(model) == before
    assert model_state(model) == before
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    model.features[3].eval()


def test_frozen_parameters_still_give_gradients():
    loaded = load_model("resnet18", "random")
    flags = [p.requires_grad for p in loaded.model.parameters()]
    try:
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            found = class_activation_map(loaded, torch.rand(1, 3, 224, 224), "gradcam", 0)
        assert found.map.abs().sum() > 0
    finally:
        for p, flag in zip(loaded.model.parameters(), flags):
            p.requires_grad_(flag)


def test_projection_is_zero_outside_the_receptive_field():
    """A unit of a 3×3 conv → 3×3 conv stack sees a 5×5 window: the projection is zero outside it."""
    torch.manual_seed(0)

    class Loaded:  # the fields project() uses
        pass

    from cnnviz.layers import LayerInfo
    loaded = Loaded()
    loaded.model = tiny_net().eval()
    loaded.lock = threading.RLock()
    x = torch.rand(1, 3, 32, 32)
    info = LayerInfo("2", "Conv2d", (6, 32, 32), 1)
    for method in PROJECTIONS:
        found = project(loaded, x, info, 1, method, position=(10, 20))
        assert found.image.shape == (3, 32, 32) and torch.isfinite(found.image).all()
        support = found.image.abs().sum(0) > 0
        rows, cols = torch.nonzero(support, as_tuple=True)
        assert support.any()
        assert rows.min() >= 8 and rows.max() <= 12 and cols.min() >= 18 and cols.max() <= 22


def test_class_by_label_index_and_errors():
    loaded = load_model("resnet18", "random")
    assert class_index(loaded, "TABBY") == 281 and class_index(loaded, "") is None and class_index(loaded, "3") == 3
    with pytest.raises(InvalidOptionError, match="Did you mean: tabby"):
        class_index(loaded, "tabbby")
    with pytest.raises(InvalidOptionError, match="out of range"):
        cnnviz.attribution("resnet18", "examples/coffee.png", target=1000, weights="random")
    with pytest.raises(InvalidOptionError, match=r"use one of: gradcam \(Grad-CAM\)"):
        cnnviz.attribution("resnet18", "examples/coffee.png", method="cam", weights="random")
    with pytest.raises(UnknownLayerError):
        cnnviz.attribution("resnet18", "examples/coffee.png", layer="layer9", weights="random")


def test_views():
    view = cnnviz.attribution("resnet18", "examples/coffee.png", weights="random", opacity=0.3)
    assert view.map.dtype == np.float32 and view.map.shape == (7, 7) and view.layer.name == "layer4"
    assert view.overlay.dtype == np.uint8 and view.overlay.shape[1] == 224
    projected = cnnviz.projection("resnet18", "examples/coffee.png", "layer3", 7, "deconvnet", weights="random")
    assert projected.image.shape == (224, 224 * 2 + 8, 3) and np.isfinite(projected.projection).all()


def test_concurrent_attribution_and_feature_maps_match_sequential():
    model, image = "resnet18", "examples/cat.png"
    expected_cam = cnnviz.attribution(model, image, weights="random").map
    expected_maps = cnnviz.feature_maps(model, image, "layer3", weights="random").maps
    results, errors = [], []

    def work(i):
        try:
            if i % 2:
                results.append(("cam", cnnviz.attribution(model, image, weights="random").map))
            else:
                explore.KEPT.clear()
                results.append(("maps", cnnviz.feature_maps(model, image, "layer3", weights="random").maps))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for kind, value in results:
        if kind == "cam":
            assert np.allclose(value, expected_cam, rtol=1e-5, atol=1e-7)
        else:
            assert torch.allclose(value, expected_maps)
    hooks, *_ = model_state(load_model(model, "random").model)
    assert hooks == 0


def test_guided_gradcam_is_guided_backprop_kept_where_the_class_map_is_on():
    """Selvaraju et al.'s product, checked against independent pieces: the class is the one Grad-CAM
    explains, and wherever the upsampled Grad-CAM is zero the guided signal is zero too; where both are on,
    the signal is the hand-computed guided backprop (ReLU gradients masked to positive) times the map."""
    loaded = load_model("resnet18", "random")
    view = explore.guided_gradcam("resnet18", "examples/cat.png", "", "layer4", "random")
    cam = explore.attribution("resnet18", "examples/cat.png", "gradcam", "", "layer4", "random")
    assert view.class_index == cam.class_index and view.signal.shape == (3, 224, 224)
    weight = F.interpolate(torch.from_numpy(cam.map)[None, None], (224, 224), mode="bilinear", align_corners=False)[0, 0]
    off = (weight <= 0).numpy()
    assert np.isfinite(view.signal).all() and (view.signal[:, off] == 0).all()
    # guided backprop by hand: every ReLU passes back only positive gradients where its input was positive
    x = preprocess.model_input(loaded, "examples/cat.png").x.clone().requires_grad_(True)
    relus = [m for m in loaded.model.modules() if isinstance(m, torch.nn.ReLU)]
    saved = [m.inplace for m in relus]
    # the ReLU's own gradient (already masked to where its input was positive), negatives dropped
    handles = [m.register_full_backward_hook(lambda _m, gi, _go: (gi[0].clamp(min=0),)) for m in relus]
    try:
        for m in relus:
            m.inplace = False
        with torch.enable_grad():
            score = loaded.model(x)[0, cam.class_index]
            grad, = torch.autograd.grad(score, x)
    finally:
        for handle, m, inplace in zip(handles, relus, saved):
            handle.remove()
            m.inplace = inplace
    expected = (grad[0] * weight).numpy()
    assert np.allclose(view.signal, expected, rtol=1e-3, atol=1e-5 * float(np.abs(expected).max()))


def test_gradcam_at_a_layer_overwritten_in_place_equals_the_independent_computation():
    """layer1.0.bn1's output is overwritten by the in-place ReLU after it; the graph starts at the layer
    (cnnviz.attribution.graph_from_layer) from a copy of that output, so the map is the one an
    independent computation gets on a copy of the model without in-place ops."""
    import copy

    loaded = load_model("resnet18", "random")
    info = explore.find_layer("resnet18", "random", "layer1.0.bn1")
    assert info.overwritten and info.calls == 1
    torch.manual_seed(1)
    x = torch.rand(1, 3, 224, 224)
    plain = copy.deepcopy(loaded.model).eval()
    for m in plain.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    found = class_activation_map(loaded, x, "gradcam", 7, info)
    expected = reference_gradcam(plain, "layer1.0.bn1", x, 7)
    assert torch.allclose(found.map, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()) + 1e-12)


@pytest.mark.parametrize("grad_mode", [True, False])
def test_the_callers_gradient_mode_comes_back(grad_mode):
    """The graph is turned on inside the pass at the target layer; the caller's mode is restored after."""
    loaded = load_model("resnet18", "random")
    with torch.set_grad_enabled(grad_mode):
        class_activation_map(loaded, torch.rand(1, 3, 224, 224), "gradcam", 1, "layer3")
        assert torch.is_grad_enabled() is grad_mode


def test_a_stop_lands_inside_scorecam_batches(monkeypatch):
    """Score-CAM's masked passes run under the stop check: once it says stop, the next module raises."""
    from cnnviz import cancel, hooks

    loaded = load_model("resnet18", "random")
    monkeypatch.setattr(hooks, "STOP_CHECK_EVERY_S", 0.0)  # ask at every module boundary
    modules = sum(1 for _ in loaded.model.modules())
    asked, passes = [], []
    fire_at = 4 * modules  # inside the masked passes: the first two passes are the scores and the baseline

    def check():
        asked.append(1)
        return "gone" if len(asked) > fire_at else None

    before = model_state(loaded.model)
    handle = loaded.model.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        with cancel.stop_when(check), pytest.raises(cancel.Stopped, match="gone"):
            class_activation_map(loaded, torch.rand(1, 3, 224, 224), "scorecam", 1, "layer4", batch=2)
    finally:
        handle.remove()
    assert len(asked) == fire_at + 1  # it stopped at the first boundary after the check fired
    assert 3 <= len(passes) <= 5  # …in the masked passes, long before the 258 a 512-channel layer takes
    assert model_state(loaded.model) == before


def test_weights_too_large_for_float32_get_a_sentence_not_a_crash(coffee):
    """Huge finite weights (a diverged run; NaN/inf files are refused when loaded) overflow on the way
    back to the pixels: the projection says so instead of raising from numpy."""
    from cnnviz import errors, explore

    loading.clear_cache()
    loaded = loading.load_model("resnet18", "random")
    with torch.no_grad():
        loaded.model.conv1.weight.fill_(3e38)
    try:
        with pytest.raises(errors.CnnvizError, match="overflowed: ResNet-18's weights make values too large"):
            explore.projection("resnet18", coffee, "layer1", 0, weights="random")
    finally:
        loading.clear_cache()
