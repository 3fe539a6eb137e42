"""The channel drill-down: statistics, selection, the tile under a click, the channel on the picture the
model saw, exports, and where a layer sits — each against an independent computation."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from matplotlib import colormaps
from PIL import Image

import cnnviz
from cnnviz import activations, explore, loading, preprocess, receptive, render
from cnnviz.errors import InvalidOptionError


def _hooked(loaded, name: str, x: torch.Tensor) -> torch.Tensor:
    """The module's raw output for ``x``, by a hook of this test's own (not the library's capture)."""
    out = {}

    def keep(_module, _inputs, output) -> None:  # returns None: a hook's return value would replace the output
        out.setdefault("o", output.detach().clone())

    handle = loaded.model.get_submodule(name).register_forward_hook(keep)
    try:
        with torch.no_grad():
            loaded.model(x)
    finally:
        handle.remove()
    return out["o"][0]


@pytest.fixture(scope="module")
def resnet():
    loaded = cnnviz.load_model("resnet18", "random")
    x = preprocess.to_input(loaded, preprocess.open_image("examples/coffee.png"))
    return loaded, x


@pytest.mark.parametrize("layer", ["layer1.0.bn1", "layer1.0.relu", "layer2.1.conv2"])
def test_channel_statistics_equal_numpy_on_the_hooked_output(resnet, coffee, layer):
    loaded, x = resnet
    out = _hooked(loaded, layer, x)
    reference = out.double().numpy().reshape(out.shape[0], -1)
    stats = explore.layer_stats("resnet18", coffee, layer, "random").stats
    np.testing.assert_allclose(stats.mean, reference.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, reference.std(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.max, reference.max(1), rtol=1e-6)
    np.testing.assert_allclose(stats.min, reference.min(1), rtol=1e-6)
    np.testing.assert_array_equal(stats.zeros, (reference == 0).mean(1))
    np.testing.assert_array_equal(stats.positive, (reference > 0).mean(1))
    csv = stats.to_csv().splitlines()
    assert csv[0] == "channel,mean,max,min,std,zeros,positive,dead" and len(csv) == 1 + reference.shape[0]
    assert float(csv[5].split(",")[1]) == pytest.approx(reference[4].mean(), rel=1e-6)


def test_dead_and_constant_channels_are_told_apart():
    maps = torch.rand(6, 5, 5)
    maps[1] = 0.0  # dead
    maps[4] = 2.5  # constant, alive
    stats = activations.channel_stats(maps)
    assert stats.dead.tolist() == [1] and stats.constant.tolist() == [1, 4]
    assert activations.select_channels(maps, "dead", 64).tolist() == [1]
    flat = maps.reshape(6, -1)
    assert activations.select_channels(maps, "top-max", 3).tolist() == flat.amax(1).argsort(descending=True)[:3].tolist()
    assert activations.select_channels(maps, "top", 6).tolist() == flat.mean(1).argsort(descending=True).tolist()
    # drawn: the dead tile striped (two colours), the constant one a flat mid-grey, unlike any dead tile
    grid = render.render_feature_maps(maps.numpy(), "gray", "channel", labels=range(6))
    layout = render.feature_grid_layout(6, 5, 5, labelled=True)
    tile = lambda i: grid[layout.origin(i)[0] : layout.origin(i)[0] + layout.tile_h, layout.origin(i)[1] : layout.origin(i)[1] + layout.tile_w]  # noqa: E731
    assert len(np.unique(tile(1).reshape(-1, 3), axis=0)) == 2
    assert (tile(4) == 128).all()


@contextmanager
def alexnet_filter_zeroed(index: int):
    """AlexNet (random weights) with its first convolution's filter ``index`` and bias zeroed, so channel
    ``index`` of ``features.1`` (after the ReLU) is dead; put back, kept maps forgotten, on exit."""
    conv = cnnviz.load_model("alexnet", "random").model.features[0]
    saved = conv.weight[index].clone(), conv.bias[index].clone()
    with torch.no_grad():
        conv.weight[index] = 0.0
        conv.bias[index] = 0.0
    explore.KEPT.clear()
    try:
        yield
    finally:
        with torch.no_grad():
            conv.weight[index], conv.bias[index] = saved
        explore.KEPT.clear()


def test_a_zeroed_filter_gives_a_dead_channel_in_the_view(coffee):
    with alexnet_filter_zeroed(7):
        view = explore.feature_maps("alexnet", coffee, "features.1", "random", channels="dead", n=64)
        assert 7 in view.channels.tolist()
        assert 7 in explore.layer_stats("alexnet", coffee, "features.1", "random").stats.dead.tolist()


@pytest.mark.parametrize("channels", ["first", "top", "top-max"])
def test_the_tile_under_a_click_is_the_channel_drawn_there(coffee, channels):
    view = explore.feature_maps("resnet18", coffee, "layer1", "random", channels=channels, n=20)
    layout = view.layout
    for k in (0, 7, 19):
        y, x = layout.origin(k)
        picked = explore.channel_at("resnet18", coffee, "layer1", x + layout.tile_w / 2, y + layout.tile_h / 2, "random", channels, 20)
        assert picked == int(view.channels[k])
        assert explore.channel_at("resnet18", coffee, "layer1", x - 1, y + 1, "random", channels, 20) is None  # gutter
    assert view.image.shape[0] > layout.shape[0] and view.image.shape[1] == layout.shape[1]  # the colour bar below


def test_the_picture_the_model_saw_is_its_resize_and_centre_crop(resnet):
    loaded, _ = resnet
    photo = Image.open("examples/grace_hopper.jpg").convert("RGB")  # a portrait: the crop drops its top and bottom
    seen = preprocess.seen_image(loaded, preprocess.to_input(loaded, photo))
    resized = torchvision.transforms.functional.resize(photo, 256)
    expected = np.asarray(torchvision.transforms.functional.center_crop(resized, 224), dtype=np.float32)
    assert seen.shape == (224, 224, 3) and np.abs(seen - expected).mean() < 2.0


def test_the_channel_overlay_is_the_upsampled_map_blended_over_the_picture(resnet, coffee):
    loaded, x = resnet
    maps = _hooked(loaded, "layer1.0.bn1", x)  # BatchNorm output: most channels signed
    c = next(i for i in range(len(maps)) if maps[i].min() < 0 < maps[i].max())
    reference = maps[c]
    view = explore.channel("resnet18", coffee, "layer1.0.bn1", c, "random", opacity=0.0)
    torch.testing.assert_close(view.values, reference)
    np.testing.assert_array_equal(view.overlay, view.picture)  # opacity 0: the picture alone
    full = explore.channel("resnet18", coffee, "layer1.0.bn1", c, "random", opacity=1.0)
    assert full.colormap == "coolwarm"
    half = reference.abs().max()
    unit = F.interpolate((0.5 + reference / (2 * half))[None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0]
    expected = colormaps["coolwarm"](unit.clamp(0, 1).numpy())[..., :3] * 255
    assert np.abs(full.overlay.astype(float) - expected).mean() < 2.0
    mid = explore.channel("resnet18", coffee, "layer1.0.bn1", c, "random", opacity=0.5)
    np.testing.assert_allclose(mid.overlay, (full.overlay.astype(float) + view.picture) / 2, atol=1)
    assert view.value_range == (-float(half), float(half))
    assert view.stats["max"] == pytest.approx(float(reference.max())) and view.stats["zeros"] == float((reference == 0).float().mean())


@pytest.mark.parametrize("bad", [-1, 64, 2.5, "3", True, None])
def test_a_channel_out_of_range_is_a_sentence(coffee, bad):
    with pytest.raises(InvalidOptionError, match=r"Channel must be a whole number from 0 to 63 \(layer1 has 64 channels\)"):
        explore.channel("resnet18", coffee, "layer1", bad, "random")


def test_exported_activations_are_the_hooked_output(resnet, coffee):
    loaded, x = resnet
    info, maps, used = explore.layer_activations("resnet18", coffee, "layer3.1.conv1", "random")
    torch.testing.assert_close(maps, _hooked(loaded, "layer3.1.conv1", x))
    assert maps.dtype == torch.float32 and info.shape == tuple(maps.shape) and not used.pretrained


@pytest.mark.slow
def test_channels_last_activations_are_exported_as_chw(coffee):
    loaded = cnnviz.load_model("timm/convnext_tiny", "random")
    x = preprocess.to_input(loaded, preprocess.open_image(coffee))
    raw = _hooked(loaded, "stages.1.blocks.0.mlp.fc1", x)  # [H, W, C]
    _, maps, _ = explore.layer_activations("timm/convnext_tiny", coffee, "stages.1.blocks.0.mlp.fc1", "random")
    torch.testing.assert_close(maps, raw.permute(2, 0, 1))


@pytest.mark.slow
def test_receptive_fields_match_published_and_hand_computed_figures():
    zeros = torch.zeros(1, 3, 224, 224)
    alex = receptive.trace_geometry(torchvision.models.alexnet(), ["features.10", "features.12"], zeros)
    vgg = receptive.trace_geometry(torchvision.models.vgg16(), ["features.28", "features.30"], zeros)
    # Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks" (Distill, 2019): AlexNet
    # conv5 163 / pool5 195; VGG-16 conv5_3 196 / pool5 212
    assert [alex[n].field[0] for n in ("features.10", "features.12")] == [163, 195]
    assert [vgg[n].field[0] for n in ("features.28", "features.30")] == [196, 212]
    assert vgg["features.30"].stride == (32.0, 32.0)
    # torchvision ResNet-50 (stride in the 3×3 conv): 7 → 11 (pool) → +3·8 → +8+3·16 → +16+5·32 → +32+2·64
    res = receptive.trace_geometry(torchvision.models.resnet50(), ["layer1", "layer2", "layer3", "layer4", "layer2.0.downsample"], zeros)
    assert [res[n].field[0] for n in ("layer1", "layer2", "layer3", "layer4")] == [35, 91, 267, 427]
    assert res["layer2.0.downsample"].stride == (8.0, 8.0) and res["layer2.0.downsample"].field == (35, 35)


def test_parallel_branches_are_not_compounded():
    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(3, 4, (1, 5), padding=(0, 2))
            self.short = torch.nn.Conv2d(3, 4, 1, stride=2)
            self.down = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x):
            s = self.a(x) + self.b(x)  # widest branch: 3 rows, 5 columns — not 3 + 5 - 1
            return self.down(s) + self.short(x)

    geo = receptive.trace_geometry(Branches(), ["a", "b", "short", "down"], torch.zeros(1, 3, 32, 32))
    assert geo["a"].field == (3, 3) and geo["b"].field == (1, 5)
    assert geo["down"].field == (5, 7) and geo["down"].stride == (2.0, 2.0)  # the sum's field + (3-1)·1
    assert geo["short"].field == (1, 1) and geo["short"].stride == (2.0, 2.0)


def test_attention_sees_the_whole_input_and_the_caption_says_where_a_layer_sits():
    loaded = cnnviz.load_model("timm/vit_tiny_patch16_224", "random")
    found = cnnviz.list_layers(loaded)
    geo = receptive.layer_geometry(loaded, found)
    assert geo["patch_embed"].field == (16, 16) and not geo["patch_embed"].whole
    assert geo["blocks.0"].whole and geo["blocks.0"].stride == (16.0, 16.0)
    resnet = cnnviz.load_model("resnet18", "random")
    place = explore.layer_place(resnet, cnnviz.get_layer(resnet, "layer2.0.conv2"))
    # 7 (conv1, /2) → 11 (maxpool, /4) → 4 convs of layer1: 11 + 4·2·4 = 43 → layer2.0.conv1 (/8): 51 → conv2: 51 + 2·8
    assert place == "in layer2.0 (BasicBlock) · stride 8 · receptive field 67×67 px of the 224×224 input"


def test_squeeze_and_excitation_keeps_the_local_field_and_says_it_adds_global_context():
    import timm

    zeros = torch.zeros(1, 3, 224, 224)
    # torchvision's SE pools with adaptive_avg_pool2d, timm's with x.mean((2, 3), keepdim=True): both are a
    # global summary multiplied into a local map — the field stays local (3×3 stem, then the 3×3 depthwise at
    # stride 2: 3 + 2·2 = 7), and the geometry says the summary was mixed in
    tv = receptive.trace_geometry(torchvision.models.mobilenet_v3_small(), ["features.0", "features.1"], zeros)
    assert tv["features.1"].field == (7, 7) and tv["features.1"].context and not tv["features.1"].whole
    assert not tv["features.0"].context
    tm = receptive.trace_geometry(timm.create_model("efficientnet_b0"), ["blocks.0.0"], zeros)
    assert tm["blocks.0.0"].field == (7, 7) and tm["blocks.0.0"].context
    assert "plus a summary of the whole input" in tm["blocks.0.0"].describe((224, 224))
    plain = receptive.trace_geometry(torchvision.models.resnet18(), ["layer4"], zeros)["layer4"]
    assert not plain.context and not plain.whole


def test_a_dead_channel_leaves_the_picture_untouched_and_is_striped(coffee):
    with alexnet_filter_zeroed(7):
        view = explore.channel("alexnet", coffee, "features.1", 7, "random", opacity=0.8)
    assert view.stats["max"] == view.stats["min"] == 0
    np.testing.assert_array_equal(view.overlay, view.picture)  # nothing fires: no colour laid over the photo
    side = view.enlarged.shape[1]  # the 55×55 map enlarged by a whole factor (220 px), a colour bar below
    np.testing.assert_array_equal(view.enlarged[:side, :side], render.dead_tile(side, side))


def test_one_page_update_is_one_call_with_at_most_one_pass(coffee):
    """``maps_page`` gives the grid, the statistics and the drilled-down channel of one Feature maps update
    from one pass, and each equals what the three views give one by one."""
    loading.clear_cache()
    explore.KEPT.clear()
    loaded = loading.load_model("resnet18", "random")
    explore.feature_maps(loaded, "examples/cat.png", "layer2")  # the model's listing and geometry: traced once per model
    passes = []
    handle = loaded.model.conv1.register_forward_hook(lambda *_: passes.append(1))
    try:
        page = explore.maps_page(explore.MapsQuery("resnet18", coffee, "layer2", weights="random", channels="top",
                                                   n=16, channel=5, opacity=0.3))
    finally:
        handle.remove()
    assert len(passes) == 1
    grid = explore.feature_maps("resnet18", coffee, "layer2", "random", "top", 16)
    stats = explore.layer_stats("resnet18", coffee, "layer2", "random")
    drilled = explore.channel("resnet18", coffee, "layer2", 5, "random", 0.3)
    assert torch.equal(page.maps.maps, grid.maps) and np.array_equal(page.maps.image, grid.image)
    assert page.maps.channels.tolist() == grid.channels.tolist()
    assert np.array_equal(page.stats.stats.mean, stats.stats.mean) and np.array_equal(page.stats.stats.dead, stats.stats.dead)
    assert np.array_equal(page.channel.overlay, drilled.overlay) and page.channel.stats == drilled.stats
    later = explore.maps_page(explore.MapsQuery("resnet18", coffee, "layer2.0.conv1", weights="random", channel=200,
                                                keep_channel_if_present=True))
    assert later.channel is None  # the previous layer's channel 200: this one has 128, so the pick is dropped
    with pytest.raises(InvalidOptionError, match="from 0 to 127"):
        explore.maps_page(explore.MapsQuery("resnet18", coffee, "layer2.0.conv1", weights="random", channel=200))
