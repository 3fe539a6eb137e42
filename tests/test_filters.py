"""Filters: the first conv found generically, the weights the model really uses (standardised, fused branches),
tiles from those weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnviz import explore, filters, layers, loading, render


@pytest.mark.parametrize(
    ("model", "first"),
    [("alexnet", "features.0"), ("resnet18", "conv1"), ("mobilenet_v2", "features.0.0"), ("timm/efficientnet_b0.ra_in1k", "conv_stem"),
     ("timm/cspdarknet53.ra_in1k", "stem.conv1.conv")],
)
def test_first_conv_found_generically(model, first):
    loaded = loading.load_model(model, "random")
    assert layers.first_conv_name(loaded.model) == first
    assert filters.first_layer_filters(loaded).layer == first


def test_plain_conv_weight_is_the_parameter():
    loaded = loading.load_model("alexnet", "random")
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
    layout = render.filter_grid_layout(64, 11, 11)  # its number in a band above each tile
    y, x = layout.band + 3 * factor, 5 * (factor * 11 + pad) + 7 * factor  # pixel of kernel cell (3, 7)
    expected = np.rint((w[:, 3, 7] - w.min()) / (w.max() - w.min()) * 255)
    np.testing.assert_allclose(view.image[y, x], expected, atol=1)
    assert view.image.shape == (*layout.shape, 3) and layout.cols == layout.rows == 8  # 64 filters: 8 × 8


def _random_eval_model(name: str) -> torch.nn.Module:
    """A timm model with random weights and random BatchNorm statistics (so folding them matters), in eval mode."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1, 0.3)
            module.bias.data.normal_(0, 0.3)
    return model.eval()


def _pre_activation(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's own multi-branch output before its activation: the input its ``act`` module receives."""
    seen = []
    hook = block.act.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            block(x)
    finally:
        hook.remove()
    return seen[0]


REPARAMETERISABLE = [  # (model, a convolution inside the block, the block, its branches)
    ("repvgg_a0", None, "stem", "3×3 + 1×1"),
    ("mobileone_s0", None, "stem", "3×3 + 1×1"),
    ("fastvit_t8", None, "stem.0", "3×3 + 1×1"),
    ("repvgg_a0", "stages.0.1.conv_kxk.conv", "stages.0.1", "3×3 + 1×1 + identity"),  # stride 1, 48 → 48
]


@pytest.mark.parametrize(("model_name", "conv", "block_name", "kinds"), REPARAMETERISABLE)
def test_fused_kernel_reproduces_the_block(model_name, conv, block_name, kinds):
    model = _random_eval_model(model_name)
    conv = conv or layers.first_conv_name(model)
    block = model.get_submodule(block_name)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    found = filters.conv_filters(model, conv)

    assert found.fused and (found.layer, found.module_type) == (block_name, type(block).__name__)
    assert f"fused from {kinds} branches (re-parameterised" in found.description
    block_convs = {f"{block_name}.{n}" for n, m in block.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {b.name for b in found.branches if b.kind != "identity"} == block_convs
    x = torch.randn(2, model.get_submodule(conv).in_channels, 15, 15)
    expected = _pre_activation(block, x)
    got = F.conv2d(x, found.weight, found.bias, found.stride, found.padding)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    branch_alone = model.get_submodule(conv)(x).detach()
    assert (branch_alone - expected).abs().max() > 0.1  # what the tab showed before: one branch, far off
    # the live, shared model is untouched: same tensors, still multi-branch
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert block.reparam_conv is None and not hasattr(block, "id_tensor")


def test_first_layer_filters_of_a_reparameterisable_model_are_fused():
    loaded = loading.load_model("timm/repvgg_a0", "random")
    found = filters.first_layer_filters(loaded)
    assert (found.layer, found.fused, found.weight.shape) == ("stem", True, (48, 3, 3, 3))
    assert found.description == (
        "RepVggBlock · 48 filters of 3×3×3, stride 2×2 · fused from 3×3 + 1×1 branches "
        "(re-parameterised, BatchNorm folded with its running statistics)"
    )
    loading.clear_cache()


def test_an_already_reparameterised_stem_is_a_plain_convolution():
    from timm.utils.model import reparameterize_model

    model = _random_eval_model("mobileone_s0")
    deployed = reparameterize_model(model)  # timm's own whole-model conversion, on a copy
    found = filters.conv_filters(deployed, layers.first_conv_name(deployed))
    assert (found.layer, found.fused, found.branches) == ("stem.reparam_conv", False, ())
    torch.testing.assert_close(found.weight, deployed.stem.reparam_conv.weight.detach())
    fused = filters.conv_filters(model, layers.first_conv_name(model))
    torch.testing.assert_close(fused.weight, found.weight)
    torch.testing.assert_close(fused.bias, found.bias)


def test_branches_are_listed_when_they_cannot_be_fused(monkeypatch):
    model = _random_eval_model("repvgg_a0")

    def broken(self):
        raise RuntimeError("no fusing today")

    monkeypatch.setattr(type(model.stem), "reparameterize", broken)
    found = filters.conv_filters(model, "stem.conv_kxk.conv")
    assert (found.layer, found.fused) == ("stem.conv_kxk.conv", False)
    torch.testing.assert_close(found.weight, model.stem.conv_kxk.conv.weight.detach())
    assert [(b.name, b.kind) for b in found.branches] == [("stem.conv_kxk.conv", "3×3"), ("stem.conv_1x1.conv", "1×1")]
    torch.testing.assert_close(found.branches[1].weight, model.stem.conv_1x1.conv.weight.detach())
    assert found.description.endswith(
        "one of the parallel branches stem.conv_kxk.conv (3×3), stem.conv_1x1.conv (1×1), shown alone: they could not be fused"
    )


# --- Any convolution (issue 9 §2): the list, the chosen kernels, histogram, norms, errors, the cache ---

from cnnviz import errors  # noqa: E402


def test_every_conv2d_is_listed_in_definition_order():
    loaded = loading.load_model("resnet50", "random")
    expected = [n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    convs = explore.list_convolutions("resnet50", "random")
    assert [c.name for c in convs] == expected and len(expected) == 53
    assert [c.name for c in convs if c.sees_image] == ["conv1"]
    conv2 = next(c for c in convs if c.name == "layer4.2.conv2")
    assert (conv2.kind, conv2.in_channels, conv2.out_channels, conv2.groups) == ("3×3", 512, 512, 1)
    assert conv2.label == "layer4.2.conv2 · 3×3 · 512→512, stride 1"


@pytest.mark.parametrize(("model", "conv"), [("mobilenet_v2", "features.2.conv.1.0"), ("timm/efficientnet_b0", "blocks.1.0.conv_dw")])
def test_depthwise_convolutions_are_named_depthwise(model, conv):
    module = loading.load_model(model, "random").model.get_submodule(conv)
    assert module.groups == module.in_channels == module.out_channels > 1  # what depthwise means, checked independently
    view = explore.filter_grid(model, "random", layer=conv)
    assert view.conv.kind == "depthwise 3×3" and view.conv.depthwise
    assert view.filters.weight.shape == (module.out_channels, 1, 3, 3)
    assert "depthwise, each filter has one input channel" in view.drawn
    depthwise = [c for c in explore.list_convolutions(model, "random") if c.depthwise]
    truth = [n for n, m in loading.load_model(model, "random").model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert [c.name for c in depthwise] == truth


def test_grouped_convolution_named_with_its_groups_and_sliced_within_its_group():
    view = explore.filter_grid("resnext50_32x4d", "random", layer="layer1.0.conv2", input_channel=3)
    assert view.conv.kind == "grouped 3×3, 32 groups" and not view.conv.depthwise
    weight = loading.load_model("resnext50_32x4d", "random").model.layer1[0].conv2.weight.detach()
    assert weight.shape == (128, 4, 3, 3)
    assert view.drawn == "in grey: input channel 3 of each filter's 4 (grouped: 32 groups of 4 input channels)"
    expected = render.render_filters(weight[:, 3:4].numpy(), "layer")
    np.testing.assert_array_equal(view.image, expected)


def test_chosen_convolution_filters_are_its_weight_and_tiles_its_mean_or_slice():
    model = loading.load_model("resnet50", "random").model
    weight = model.get_submodule("layer4.2.conv2").weight.detach()
    mean = explore.filter_grid("resnet50", "random", "filter", layer="layer4.2.conv2")
    torch.testing.assert_close(mean.filters.weight, weight, rtol=0, atol=0)
    assert mean.input_channel is None and not mean.colour
    assert mean.drawn == "in grey: the mean over each filter's 512 input channels"
    # independent drawing: filter 5's tile is the per-filter min-max of its mean over input channels
    w = weight[5].mean(dim=0).numpy()
    size = render.tile_size(512, 3)
    factor, pad = size // 3, max(2, size // 16)
    cols = 23  # ceil(sqrt(512))
    band = render.filter_grid_layout(512, 3, 3).band  # the filter numbers above each tile
    y, x = band + 1 * factor, 5 * (factor * 3 + pad) + 2 * factor  # kernel cell (1, 2) of tile 5 (row 0)
    expected = np.rint((w[1, 2] - w.min()) / (w.max() - w.min()) * 255)
    assert view_pixel(mean.image, y, x) == pytest.approx(expected, abs=1)
    assert mean.image.shape[1] == cols * (factor * 3 + pad) - pad
    one = explore.filter_grid("resnet50", "random", "filter", layer="layer4.2.conv2", input_channel=7)
    np.testing.assert_array_equal(one.image, render.render_filters(weight[:, 7:8].numpy(), "filter"))
    assert one.drawn == "in grey: input channel 7 of each filter's 512"
    assert explore.filter_grid("resnet50", "random", layer="layer4.2.conv2", input_channel=-1).input_channel is None


def view_pixel(image: np.ndarray, y: int, x: int) -> int:
    """A grey tile's value at (y, x): its three channels are equal."""
    assert image[y, x, 0] == image[y, x, 1] == image[y, x, 2]
    return int(image[y, x, 0])


def test_first_layer_stays_the_default_and_is_rgb():
    default = explore.filter_grid("resnet18", "random")
    named = explore.filter_grid("resnet18", "random", layer="conv1")
    np.testing.assert_array_equal(default.image, named.image)
    assert default.conv.name == "conv1" and default.colour and default.drawn.startswith("in colour")
    red = explore.filter_grid("resnet18", "random", layer="conv1", input_channel=0)  # a slice of an RGB layer: grey
    assert not red.colour and red.drawn == "in grey: input channel 0 of each filter's 3"


def test_histogram_counts_every_weight_like_numpy():
    view = explore.filter_grid("resnet50", "random", layer="layer3.1.conv2")
    values = loading.load_model("resnet50", "random").model.layer3[1].conv2.weight.detach().numpy().ravel()
    counts, edges = np.histogram(values, bins=filters.HISTOGRAM_BINS)
    np.testing.assert_array_equal(view.histogram.counts, counts)
    np.testing.assert_allclose(view.histogram.edges, edges)
    assert view.histogram.counts.sum() == values.size == 256 * 256 * 9
    np.testing.assert_allclose(view.histogram.centres, (edges[:-1] + edges[1:]) / 2, rtol=1e-6)


def test_norms_flag_a_zeroed_and_a_near_zero_filter():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3)
    with torch.no_grad():
        conv.weight[4] = 0  # dead
        conv.weight[9] *= 1e-5  # near zero
        conv.weight[20] *= 0.01  # weak but alive
    weight = filters.effective_weight(conv)
    norms = filters.filter_norms(weight)
    expected = torch.linalg.vector_norm(conv.weight.detach().flatten(1), dim=1).numpy()
    np.testing.assert_allclose(norms.norms, expected, rtol=1e-5)
    assert norms.median == pytest.approx(float(np.median(expected)), rel=1e-5)
    assert norms.flagged.tolist() == [4, 9] and norms.zero.tolist() == [4]


def test_a_model_with_a_dead_filter_says_so():
    loaded = loading.load_model("resnet18", "random")
    loading.clear_cache()  # this test's model is edited: keep it out of the shared cache afterwards
    with torch.no_grad():
        loaded.model.layer2[0].conv1.weight[11] = 0
    view = explore.filter_grid(loaded, layer="layer2.0.conv1")
    assert view.norms.flagged.tolist() == [11] and view.norms.zero.tolist() == [11]


def test_unknown_convolution_suggests_close_names():
    with pytest.raises(errors.UnknownLayerError, match=r"no convolution 'layer4\.2\.conv'\. Did you mean: layer4\.2\.conv3"):
        explore.filter_grid("resnet50", "random", layer="layer4.2.conv")
    with pytest.raises(errors.UnknownLayerError, match=r"'layer4\.2' is a block; its convolutions: layer4\.2\.conv1, "):
        explore.filter_grid("resnet50", "random", layer="layer4.2")
    with pytest.raises(errors.UnknownLayerError, match="Its 53 convolutions run from conv1 to layer4.2.conv3"):
        explore.filter_grid("resnet50", "random", layer="fc")


@pytest.mark.parametrize(("layer", "channel", "valid"), [
    ("layer4.2.conv2", 512, "from 0 to 511"), ("layer4.2.conv2", -2, "from 0 to 511"), ("layer4.2.conv2", 1.5, "from 0 to 511"),
])
def test_input_channel_out_of_range_says_what_is_valid(layer, channel, valid):
    with pytest.raises(errors.InvalidOptionError, match=f"Input channel must be a whole number {valid} for this layer, or -1"):
        explore.filter_grid("resnet50", "random", layer=layer, input_channel=channel)


def test_depthwise_input_channel_can_only_be_zero():
    with pytest.raises(errors.InvalidOptionError, match=r"must be 0 \(each filter has one input channel\)"):
        explore.filter_grid("mobilenet_v2", "random", layer="features.2.conv.1.0", input_channel=1)


def test_views_are_cached_per_model():
    first = explore.filter_grid("resnet50", "random", layer="layer4.2.conv2")
    explore.filter_grid("resnet50", "random", layer="layer1.0.conv1")
    assert explore.filter_grid("resnet50", "random", layer="layer4.2.conv2") is first  # switching back: the same view
    other = explore.filter_grid("resnet18", "random", layer="layer4.1.conv2")
    assert other is not first and other.filters.weight.shape == (512, 512, 3, 3)


def test_each_models_filter_cache_states_its_byte_budget_and_keeps_within_it():
    loaded = loading.load_model("resnet50", "random")
    for conv in explore.list_convolutions(loaded)[:30]:
        explore.filter_grid(loaded, layer=conv.name)
    store = filters.filter_cache(loaded)
    assert store.budget == filters.FILTERS_CACHE_BYTES and 0 < store.nbytes <= store.budget


def test_reparameterisable_stem_branches_see_the_image_and_stay_fused():
    convs = explore.list_convolutions("timm/repvgg_a0", "random")
    assert [c.name for c in convs if c.sees_image] == ["stem.conv_kxk.conv", "stem.conv_1x1.conv"]
    view = explore.filter_grid("timm/repvgg_a0", "random", layer="stem.conv_1x1.conv")
    assert view.filters.fused and view.filters.layer == "stem" and view.colour
    loading.clear_cache()


# --- Weights of any finite size, and non-finite ones: described, never a ValueError ---


def test_histogram_of_weights_wider_than_float32s_range():
    weight = torch.tensor([-3e38, -2e38, 1e37, 3e38]).reshape(4, 1, 1, 1)
    histogram = filters.weight_histogram(weight, bins=4)
    assert histogram.counts.tolist() == [2, 0, 1, 1] and histogram.non_finite == 0
    np.testing.assert_allclose(histogram.edges, [-3e38, -1.5e38, 0.0, 1.5e38, 3e38], rtol=1e-6)


def test_histogram_counts_non_finite_weights_apart():
    weight = torch.tensor([float("nan"), float("inf"), 0.0, 1.0, 1.0, 2.0])
    histogram = filters.weight_histogram(weight, bins=2)
    assert histogram.counts.tolist() == [1, 3] and histogram.non_finite == 2
    assert filters.weight_histogram(torch.full((3,), float("nan"))).counts.sum() == 0


def test_norms_of_huge_weights_are_finite():
    weight = torch.full((3, 2, 3, 3), 1e20)  # squares of 1e40: beyond float32
    weight[1] = 1.0
    norms = filters.filter_norms(weight)
    np.testing.assert_allclose(norms.norms, [1e20 * np.sqrt(18), np.sqrt(18), 1e20 * np.sqrt(18)], rtol=1e-6)
    assert norms.median == pytest.approx(1e20 * np.sqrt(18)) and norms.flagged.tolist() == [1]


def test_a_nan_filter_is_neither_the_median_nor_flagged():
    weight = torch.ones(4, 1, 2, 2)
    weight[2] = float("nan")
    weight[3] = 0
    norms = filters.filter_norms(weight)
    assert norms.median == 2.0 and norms.flagged.tolist() == [3]


def test_the_mean_over_input_channels_of_huge_weights_does_not_overflow():
    weight = torch.full((1, 4, 1, 1), 3e38)
    assert filters.filter_planes(weight, None, colour=False).item() == pytest.approx(3e38)


@pytest.mark.parametrize("value", [1e8, -3e38], ids=["1e8", "-3e38"])
def test_histogram_of_a_layer_of_one_large_value(value):
    """numpy bins a constant c over c ± 0.5, which float32 cannot tell apart from c at this magnitude."""
    histogram = filters.weight_histogram(torch.full((8, 2, 3, 3), value), bins=4)
    assert histogram.counts.tolist() == [0, 0, 144, 0]
    low, high = histogram.edges[[0, -1]]
    value = float(np.float32(value))  # as the tensor holds it
    assert low < value < high and (np.diff(histogram.edges) > 0).all()
    if value == 1e8:
        assert (low, high) == (value - 0.5, value + 0.5)  # numpy's own rule, where float64 can follow it
