"""Filters: the first conv found generically, the weights the model really uses (standardised, fused branches),
tiles from those weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
    loaded = registry.load_model("timm/repvgg_a0", "random")
    found = filters.first_layer_filters(loaded)
    assert (found.layer, found.fused, found.weight.shape) == ("stem", True, (48, 3, 3, 3))
    assert found.description == (
        "RepVggBlock · 48 filters of 3×3×3, stride 2×2 · fused from 3×3 + 1×1 branches "
        "(re-parameterised, BatchNorm folded with its running statistics)"
    )
    registry.clear_cache()


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
