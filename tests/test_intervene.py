"""Interventions and channel importance: equal to an independent forward pass with a hook written here
(every mode, every layout: NCHW, channels-last, patch tokens, depthwise), the batched fast path equal to
whole copies, bad requests answered with sentences, and the shared model left as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz
from cnnviz import budget, explore
from cnnviz.errors import InvalidOptionError, UnknownLayerError
from cnnviz.intervene import channel_importance, intervene
from cnnviz.layers import get_layer
from cnnviz.loading import from_module, load_model

COFFEE = "examples/coffee.png"


# --- the reference: a hook written from the definitions, nothing from cnnviz.intervene ----------------


def reference_change(out: torch.Tensor, layout: str, prefix: int, mode: str, channels: list[int], factor: float) -> torch.Tensor:
    """The layer's raw output with ``channels`` changed, index by index, from the definitions."""
    out = out.clone()
    count = out.shape[1] if layout == "NCHW" else out.shape[-1]
    for c in range(count):
        if layout == "NCHW":
            sel = (slice(None), c)
        elif layout == "NHWC":
            sel = (slice(None), slice(None), slice(None), c)
        else:  # tokens: the patch tokens only
            sel = (slice(None), slice(prefix, None), c)
        values = out[sel]
        if mode == "keep":
            if c not in channels:
                out[sel] = 0
        elif c in channels:
            if mode == "zero":
                out[sel] = 0
            elif mode == "scale":
                out[sel] = values * factor
            elif mode == "mean":
                per_item = values.reshape(values.shape[0], -1).mean(1)
                out[sel] = per_item.reshape(-1, *([1] * (values.ndim - 1))).expand_as(values)
    return out


def reference_logits(model: nn.Module, layer: str, x: torch.Tensor, change) -> torch.Tensor:
    """Logits of ``x`` with ``change(output)`` handed on by the first call of ``layer`` (a hook written here)."""
    module = dict(model.named_modules())[layer]
    calls = []

    def hook(_m, _i, out):
        calls.append(1)
        return change(out) if len(calls) == 1 else None

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x).float()
    finally:
        handle.remove()


class ChannelsLast(nn.Module):
    """A ConvNeXt-like block written here: conv stem, then channels-last LayerNorm and Linear (N×H×W×C)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 4, stride=4)
        self.norm = nn.LayerNorm(12)
        self.fc1 = nn.Linear(12, 20)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(20, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.fc2(self.act(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    """DenseNet-like: a later map concatenated with an earlier one (no broadcast over the batch there)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=4, padding=1)
        self.b = nn.Conv2d(6, 10, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = self.b(a)
        return self.head(torch.cat([a, b], 1).mean((2, 3)))


class BatchRead(nn.Module):
    """Swin-like: reads the batch size before the layer and reshapes with it after (no batch there but its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=8, padding=1)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Linear(5 * 8 * 8, 3)

    def forward(self, x):
        n = x.shape[0]
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).reshape(n, -1))


@pytest.fixture(scope="module")
def channels_last():
    torch.manual_seed(0)
    return from_module(ChannelsLast(), input_size=(3, 64, 64), name="test-intervene-nhwc")


@pytest.fixture(scope="module")
def concat():
    torch.manual_seed(1)
    return from_module(Concat(), input_size=(3, 64, 64), name="test-intervene-concat")


def _input(loaded, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(1, *loaded.input_size)


CASES = [  # (model, layer, expected layout)
    ("resnet18", "layer3.1.conv1", "NCHW"),
    ("resnet18", "layer2.0.bn1", "NCHW"),  # overwritten by a later in-place ReLU
    ("resnet18", "layer4", "NCHW"),
    ("mobilenet_v2", "features.3.conv.1.0", "NCHW"),  # depthwise 3×3
    ("timm/vit_tiny_patch16_224", "blocks.2.mlp.fc1", "tokens"),
]


@pytest.mark.parametrize("mode, channels, factor", [("zero", [0, 3, 5], 1.0), ("mean", [1, 2], 1.0), ("scale", [4, 0], 2.5), ("keep", [2, 6], 1.0)])
@pytest.mark.parametrize("name, layer, layout", CASES)
def test_intervention_equals_a_hooked_forward(name, layer, layout, mode, channels, factor):
    loaded = load_model(name, "random")
    info = get_layer(loaded, layer)
    assert info.layout == layout
    x = _input(loaded)
    found = intervene(loaded, x, info, channels, mode, factor)
    expected = reference_logits(loaded.model, layer, x, lambda out: reference_change(out, layout, info.prefix, mode, channels,
                                                                                     factor))
    with torch.no_grad():
        plain = loaded.model(x)[0].float()
    assert torch.allclose(found.logits_before, plain, atol=1e-5)
    assert torch.allclose(found.logits_after, expected[0], rtol=1e-5, atol=1e-5)
    assert found.channels == tuple(sorted(channels))
    if mode in ("zero", "keep"):  # (a channel's mean at the last map before global pooling changes nothing: not checked)
        assert not torch.equal(found.logits_after, found.logits_before)


@pytest.mark.parametrize("mode", ["zero", "mean", "scale", "keep"])
def test_channels_last_intervention(channels_last, mode):
    info = get_layer(channels_last, "fc1")
    assert info.layout == "NHWC" and info.shape == (20, 16, 16)
    x = _input(channels_last)
    found = intervene(channels_last, x, info, [1, 9, 19], mode, 1.7, later=get_layer(channels_last, "fc2"))
    expected = reference_logits(channels_last.model, "fc1", x, lambda out: reference_change(out, "NHWC", 0, mode, [1, 9, 19], 1.7))
    assert torch.allclose(found.logits_after, expected[0], atol=1e-5)
    assert found.later_is_after and found.later_before.shape == found.later_after.shape == (12, 16, 16)
    assert not torch.equal(found.later_before, found.later_after)


def test_later_maps_before_and_after():
    """The later layer's maps: as the model made them, and as the changed pass made them (a hook written here)."""
    loaded = load_model("resnet18", "random")
    x = _input(loaded)
    found = intervene(loaded, x, get_layer(loaded, "layer3"), [0, 1, 2], "zero", later=get_layer(loaded, "layer4.0.conv1"))
    kept = []
    module = loaded.model.layer4[0].conv1
    handle = module.register_forward_hook(lambda _m, _i, out: kept.append(out[0].clone()))
    try:
        reference_logits(loaded.model, "layer3", x, lambda out: reference_change(out, "NCHW", 0, "zero", [0, 1, 2], 1))
    finally:
        handle.remove()
    assert torch.allclose(found.later_after, kept[0], atol=1e-5)
    earlier = intervene(loaded, x, get_layer(loaded, "layer3"), [0], "zero", later=get_layer(loaded, "layer2"))
    assert not earlier.later_is_after and torch.equal(earlier.later_before, earlier.later_after)


def test_top_n_is_the_strongest_by_mean():
    loaded = load_model("resnet18", "random")
    x = _input(loaded)
    info = get_layer(loaded, "layer2")
    kept = []
    handle = loaded.model.layer2.register_forward_hook(lambda _m, _i, out: kept.append(out[0].clone()))
    try:
        with torch.no_grad():
            loaded.model(x)
    finally:
        handle.remove()
    means = kept[0].mean((1, 2))
    found = intervene(loaded, x, info, "top-5", "keep")
    assert found.channels == tuple(sorted(means.argsort(descending=True)[:5].tolist()))
    assert intervene(loaded, x, info, " 7,3  12 ", "zero").channels == (3, 7, 12)
    assert intervene(loaded, x, info, 4, "zero").channels == (4,)


# --- channel importance ------------------------------------------------------------------------------


def reference_drops(loaded, layer: str, layout: str, prefix: int, x: torch.Tensor, channels, target: int) -> torch.Tensor:
    """One whole forward per channel, that channel zeroed by a hook written here."""
    with torch.no_grad():
        before = loaded.model(x)[0, target].float()
    return torch.stack([
        before - reference_logits(loaded.model, layer, x, lambda out, c=c: reference_change(out, layout, prefix, "zero", [c], 1))[0, target]
        for c in channels])


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_importance_equals_single_ablations_resnet():
    loaded = load_model("resnet18", "random")
    info = get_layer(loaded, "layer1.0.conv1")
    x = _input(loaded, 3)
    found = channel_importance(loaded, x, info, target=7, batch=24)
    expected = reference_drops(loaded, info.name, "NCHW", 0, x, range(info.shape[0]), 7)
    assert found.drops.shape == (64,) and found.class_index == 7 and found.fast
    assert found.passes == 1 + 3 + (1 if found.passes == 5 else 0)  # as is, 3 batches (and the first time, one check)
    assert torch.allclose(found.drops, expected, rtol=1e-4, atol=1e-4)


def test_importance_channels_last_and_tokens(channels_last):
    found = channel_importance(channels_last, _input(channels_last), get_layer(channels_last, "fc1"), batch=7)
    expected = reference_drops(channels_last, "fc1", "NHWC", 0, _input(channels_last), range(20), found.class_index)
    assert found.fast and torch.allclose(found.drops, expected, atol=1e-5)
    vit = load_model("timm/vit_tiny_patch16_224", "random")
    info = get_layer(vit, "blocks.10.mlp.fc1")
    x = _input(vit)
    found = channel_importance(vit, x, info, batch=64)
    some = [0, 5, 100, 767]  # a few of the 768 channels, each by its own whole forward
    expected = reference_drops(vit, info.name, "tokens", info.prefix, x, some, found.class_index)
    assert found.fast and torch.allclose(found.drops[some], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_fast_path_equals_whole_copies():
    loaded = load_model("resnet18", "random")
    info = get_layer(loaded, "layer2.1.conv1")  # a residual shortcut made before it is added after it
    x = _input(loaded, 5)
    fast = channel_importance(loaded, x, info, batch=32, fast=True)
    whole = channel_importance(loaded, x, info, batch=32, fast=False)
    assert fast.fast and not whole.fast
    assert torch.allclose(fast.drops, whole.drops, rtol=1e-4, atol=1e-4)
    assert fast.drops.abs().max() > 0


def test_concatenation_falls_back_to_whole_copies(concat):
    info = get_layer(concat, "b")
    x = _input(concat)
    found = channel_importance(concat, x, info, batch=4)
    assert not found.fast  # cat([a (batch 1), b (batch 4)]) cannot broadcast: whole copies instead
    expected = reference_drops(concat, "b", "NCHW", 0, x, range(10), found.class_index)
    assert torch.allclose(found.drops, expected, atol=1e-5)


def test_a_model_that_reads_its_batch_size_falls_back():
    torch.manual_seed(2)
    loaded = from_module(BatchRead(), input_size=(3, 64, 64), name="test-intervene-batch")
    x = _input(loaded)
    found = channel_importance(loaded, x, get_layer(loaded, "b"), batch=3)
    assert not found.fast  # reshape(1, -1) of 3 copies: the head cannot take it, whole copies instead
    expected = reference_drops(loaded, "b", "NCHW", 0, x, range(5), found.class_index)
    assert torch.allclose(found.drops, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_timm_convnext_channels_last(mode):
    loaded = load_model("timm/convnext_tiny", "random")
    info = get_layer(loaded, "stages.1.blocks.0.mlp.fc1")
    assert info.layout == "NHWC"
    x = _input(loaded)
    found = intervene(loaded, x, info, [0, 100, 767], mode)
    expected = reference_logits(loaded.model, info.name, x, lambda out: reference_change(out, "NHWC", 0, mode, [0, 100, 767], 1))
    assert torch.allclose(found.logits_after, expected[0], rtol=1e-4, atol=1e-4)
    assert not torch.equal(found.logits_after, found.logits_before)


def test_hooks_removed_and_modes_kept():
    loaded = load_model("resnet18", "random")
    x = _input(loaded)
    info = get_layer(loaded, "layer3.0.bn1")
    intervene(loaded, x, info, [0], "zero")
    channel_importance(loaded, x, info, batch=64)
    for module in loaded.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module.training


# --- the facade and bad requests ---------------------------------------------------------------------


def test_views():
    view = cnnviz.intervene("resnet18", COFFEE, "layer4", "3, 7", mode="scale", factor=0.5, weights="random",
                            later_layer="layer4.1.conv2")
    assert view.logits_before.dtype == np.float32 and view.logits_before.shape == (1000,)
    assert [p.index for p in view.top5_before] == list(np.argsort(-view.logits_before)[:5])
    assert view.maps_before.dtype == np.uint8 and view.maps_before.shape == view.maps_after.shape
    assert not view.weights.pretrained and "scaled ×0.5" in view.describe()
    assert {c.index for c in view.changes} >= {p.index for p in view.top5_after}
    ranked = cnnviz.channel_importance("resnet18", COFFEE, "layer3.1.conv2", target="tabby", weights="random")
    assert ranked.class_index == 281 and ranked.label == "tabby" and ranked.drops.shape == (256,)
    assert list(ranked.ranking) == list(np.argsort(-ranked.drops, kind="stable"))


@pytest.mark.parametrize("kwargs, words", [
    (dict(channels=[0], mode="erase"), "Unknown intervention 'erase'; use one of: zero"),
    (dict(channels=[0], mode="scale", factor=5), "from 0 to 3"),
    (dict(channels=[0], mode="scale", factor=float("nan")), "from 0 to 3"),
    (dict(channels=[9999]), "layer1 has channels 0 to 63"),
    (dict(channels="three"), "whole numbers separated by commas"),
    (dict(channels=""), "Name at least one channel"),
    (dict(channels=[]), "Name at least one channel"),
    (dict(channels="top-0"), "N of top-N must be a whole number from 1 to 64"),
    (dict(channels=[1.5]), "Channel must be a whole number"),
    (dict(channels=[True]), "Channel must be a whole number"),
])
def test_bad_interventions_are_sentences(kwargs, words):
    channels = kwargs.pop("channels")
    with pytest.raises(InvalidOptionError, match=None) as raised:
        cnnviz.intervene("resnet18", COFFEE, "layer1", channels, weights="random", **kwargs)
    assert words in str(raised.value)


def test_bad_importance_requests_are_sentences(monkeypatch):
    with pytest.raises(UnknownLayerError, match="layer4"):
        cnnviz.channel_importance("resnet18", COFFEE, "layer44", weights="random")
    with pytest.raises(InvalidOptionError, match="out of range"):
        cnnviz.channel_importance("resnet18", COFFEE, "layer4", target=5000, weights="random")
    with pytest.raises(InvalidOptionError, match="has no class 'tabbby'"):
        cnnviz.channel_importance("resnet18", COFFEE, "layer4", target="tabbby", weights="random")
    monkeypatch.setattr(budget, "REQUEST_SECONDS", 1e-6)
    with pytest.raises(InvalidOptionError, match="Channel importance at layer4 of .* would zero its 512 channels"):
        explore.channel_importance("resnet18", COFFEE, "layer4", weights="random")


def test_an_abandoned_ranking_stops_within_a_pass(monkeypatch):
    """A stop check that fires (the client is gone) ends channel importance at the next module, not after
    every channel; the model keeps no hook."""
    from cnnviz import cancel, hooks

    loaded = load_model("resnet18", "random")
    monkeypatch.setattr(hooks, "STOP_CHECK_EVERY_S", 0.0)  # ask at every module boundary
    modules = sum(1 for _ in loaded.model.modules())
    asked, passes = [], []

    def check():
        asked.append(1)
        return "gone" if len(asked) > 3 * modules else None  # during the third pass

    handle = loaded.model.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        with cancel.stop_when(check), pytest.raises(cancel.Stopped, match="gone"):
            channel_importance(loaded, _input(loaded), get_layer(loaded, "layer3.0.conv1"), batch=8)
    finally:
        handle.remove()
    assert len(passes) <= 4  # of the 1 + 32 (+1) passes 256 channels take 8 at a time
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in loaded.model.modules())


def test_page_handlers_hint_before_a_photo():
    import importlib

    tab = importlib.import_module("cnnviz.ui.feature_maps")
    assert tab.intervene_in_page("resnet18", None, "layer1", "3", "zero", 1.0, "random", "")[-1] == tab.NO_IMAGE
    said = tab.intervene_in_page("resnet18", COFFEE, "layer1", " ", "zero", 1.0, "random", "")[-1]
    assert said.startswith("Type channels first")
    assert tab.importance_in_page("resnet18", None, "layer1", "", "random")[0] == tab.NO_IMAGE
    assert tab.follow_channel(12.0) == "12"


def test_a_model_without_class_scores_gets_a_sentence():
    from cnnviz.errors import CnnvizError

    torch.manual_seed(3)
    maps_only = from_module(nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Conv2d(4, 6, 3)), input_size=(3, 32, 32),
                            name="test-intervene-maps-only")
    with pytest.raises(CnnvizError, match="does not output class scores"):
        intervene(maps_only, _input(maps_only), get_layer(maps_only, "0"), [1], "zero")
    with pytest.raises(CnnvizError, match="does not output class scores"):
        channel_importance(maps_only, _input(maps_only), get_layer(maps_only, "0"))


def test_importance_counts_its_passes_as_it_makes_them():
    """The page's progress: one call per forward pass, as it starts, against the passes expected. The first
    run at a layer expects one more (the check of the batched tail); where the check fails (a concatenation
    after the layer), the first batch runs again and the total grows to the passes made."""
    torch.manual_seed(2)
    sequential = from_module(nn.Sequential(nn.Conv2d(3, 40, 3, stride=4), nn.ReLU(), nn.Conv2d(40, 6, 3), nn.Flatten(),
                                           nn.Linear(6 * 14 * 14, 5)), input_size=(3, 64, 64), name="test-intervene-progress")
    concatenated = from_module(Concat(), input_size=(3, 64, 64), name="test-intervene-progress-cat")
    for loaded, layer, fast in ((sequential, "0", True), (concatenated, "b", False)):  # Concat's `b`: concatenated after
        info = get_layer(loaded, layer)
        for first in (True, False):
            calls: list[tuple[int, int]] = []
            view = explore.channel_importance(loaded, COFFEE, info.name, progress=lambda done, total, calls=calls: calls.append((done, total)))
            assert view.fast is fast
            assert [done for done, _ in calls] == list(range(1, view.passes + 1))
            expected = 1 + -(-info.shape[0] // view.batch) + first
            assert [total for _, total in calls] == [max(expected, done) for done in range(1, view.passes + 1)]
            assert view.passes == expected + (first and not fast)
