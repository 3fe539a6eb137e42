"""Transformer-native attribution (attention rollout, gradient-weighted rollout, LeGrad) and the further
torchcam CAMs (XGrad-CAM, Smooth Grad-CAM++, SS-CAM, IS-CAM), each against a computation written here
from its definition: the attention recomputed from each block's own q·k (timm: the ``qkv`` linear's
output; torchvision: ``in_proj``), fused attention left on, and the block's output rebuilt from that
attention so its gradient is the attention's. Random weights, small models."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import timm
import torch
import torchvision

from cnnviz import budget, cancel, explore, layers
from cnnviz.errors import InvalidOptionError
from cnnviz.loading import from_module, load_model
from cnnviz.rollout import attention_map, vit_layout

room = importlib.import_module("cnnviz.attribution")  # `cnnviz.attribution` is also the facade function
IMAGE = "examples/coffee.png"


def _with_random_head(model: torch.nn.Module) -> torch.nn.Module:
    """A random classifier head (torchvision's and timm's start at zero or near it: no gradient to read)."""
    torch.manual_seed(1)
    for name, m in model.named_modules():
        if name.split(".")[-1] in ("head", "head_dist") and isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    return model.eval()


def _tiny_timm(**kwargs) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return _with_random_head(VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                                               num_classes=10, **kwargs))


def _tiny_torchvision() -> torch.nn.Module:
    torch.manual_seed(0)
    return _with_random_head(torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=3, num_heads=2,
                                                                  hidden_dim=32, mlp_dim=64, num_classes=10))


def _tiny_beit() -> torch.nn.Module:
    from timm.models.beit import Beit

    torch.manual_seed(0)  # mean-pooled head ("avg"), no q/v biases: its qkv linear makes q, k and v
    return _with_random_head(Beit(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, num_classes=10,
                                  qkv_bias=False, use_abs_pos_emb=True))


# --- the reference: each block's attention from its own q·k, and the block's output rebuilt from it -------

def _reference_attention(model: torch.nn.Module, x: torch.Tensor, with_gradients: bool, target: int | None = None):
    """(per-block attention ``[heads,N,N]``, their gradients of the class score or None, the class, the scores).
    Fused attention stays as the model has it: the attention is recomputed here and the block's output
    replaced by ``proj(A @ V)`` from it (the same values), so the gradient reaches this ``A``."""
    found, handles = [], []
    if isinstance(model, torchvision.models.VisionTransformer):
        def rebuild(module, args, kwargs, _output):
            q_in = args[0]
            e, h = module.embed_dim, module.num_heads
            q, k, v = torch.nn.functional.linear(q_in, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
            b, n, _ = q.shape
            q, k, v = (t.reshape(b, n, h, e // h).transpose(1, 2) for t in (q, k, v))
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // h), dim=-1)
            found.append(a)
            return module.out_proj((a @ v).transpose(1, 2).reshape(b, n, e)), None

        for m in model.modules():
            if isinstance(m, torch.nn.MultiheadAttention):
                handles.append(m.register_forward_hook(rebuild, with_kwargs=True))
    else:
        qkv_out = {}
        for m in model.modules():
            if hasattr(m, "qkv") and hasattr(m, "proj") and hasattr(m, "num_heads"):
                handles.append(m.qkv.register_forward_hook(lambda mod, _i, out: qkv_out.__setitem__("t", out)))

                def rebuild(module, args, _output):
                    b, n, c = args[0].shape
                    h = module.num_heads
                    qkv = qkv_out["t"].reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
                    q, k, v = qkv.unbind(0)
                    q, k = getattr(module, "q_norm", torch.nn.Identity())(q), getattr(module, "k_norm", torch.nn.Identity())(k)
                    a = torch.softmax((q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1), dim=-1)
                    found.append(a)
                    out = (a @ v).transpose(1, 2).reshape(b, n, -1)
                    return module.proj(getattr(module, "norm", torch.nn.Identity())(out))

                handles.append(m.register_forward_hook(rebuild))
    try:
        with torch.enable_grad():
            scores = model(x.clone().requires_grad_(with_gradients))
            chosen = int(scores[0].argmax()) if target is None else target
            grads = torch.autograd.grad(scores[0, chosen], found) if with_gradients else None
    finally:
        for handle in handles:
            handle.remove()
    return [a[0].detach() for a in found], None if grads is None else [g[0] for g in grads], chosen, scores


def _readout(relevance: torch.Tensor, prefix: int, rows: list[int] | None, grid: int) -> torch.Tensor:
    picked = relevance[rows] if rows else relevance[prefix:]
    return picked.mean(0)[prefix:].reshape(grid, grid)


def _rollout_reference(attention) -> torch.Tensor:
    n = attention[0].shape[-1]
    joint = torch.eye(n)
    for a in attention:
        a = a.mean(0) + torch.eye(n)
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint


def _chefer_reference(attention, gradients) -> torch.Tensor:
    n = attention[0].shape[-1]
    r = torch.eye(n)
    for a, g in zip(attention, gradients, strict=True):
        r = r + torch.clamp(g * a, min=0).mean(0) @ r
    return r


CASES = {  # name -> (model builder, prefix tokens, rows the head reads (None: mean of the patches), input side)
    "timm-vit": (lambda: _tiny_timm(), 1, [0], 64),
    "timm-registers": (lambda: _tiny_timm(reg_tokens=4), 5, [0], 64),
    "timm-beit-mean-pooled": (_tiny_beit, 1, None, 64),
    "torchvision-vit": (_tiny_torchvision, 1, [0], 64),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rollout_and_chefer_equal_the_reference(case):
    build, prefix, rows, side = CASES[case]
    model = build()
    loaded = from_module(model, input_size=(3, side, side), name=f"tiny-{case}")
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(3))
    attention, gradients, chosen, scores = _reference_attention(model, x, with_gradients=True)
    grid = side // 16
    assert vit_layout(loaded).prefix == prefix and vit_layout(loaded).grid == (grid, grid)
    found = attention_map(loaded, x, "rollout")
    expected = _readout(_rollout_reference(attention), prefix, rows, grid)
    torch.testing.assert_close(found.map, expected, rtol=1e-4, atol=1e-6)
    assert found.top_class == int(scores[0].argmax())
    found = attention_map(loaded, x, "chefer")
    expected = _readout(_chefer_reference(attention, gradients), prefix, rows, grid)
    assert expected.abs().max() > 0  # a real gradient to compare with
    torch.testing.assert_close(found.map, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    other = (chosen + 1) % 10  # the class changes gradient-weighted rollout, not the rollout
    attention, gradients, _c, _s = _reference_attention(model, x, with_gradients=True, target=other)
    torch.testing.assert_close(attention_map(loaded, x, "chefer", other).map,
                               _readout(_chefer_reference(attention, gradients), prefix, rows, grid), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name,prefix,rows", [("timm/vit_tiny_patch16_224", 1, [0]),
                                              ("timm/deit_tiny_distilled_patch16_224", 2, [0, 1])])
def test_rollout_of_registry_vits_equals_the_reference(name, prefix, rows):
    loaded = load_model(name, "random")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    attention, _g, _c, _s = _reference_attention(loaded.model, x, with_gradients=False)
    assert len(attention) == 12 and attention[0].shape[-1] == prefix + 196
    torch.testing.assert_close(attention_map(loaded, x, "rollout").map,
                               _readout(_rollout_reference(attention), prefix, rows, 14), rtol=1e-4, atol=1e-6)


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_fused_attention_is_restored_and_hooks_removed_also_when_the_pass_raises():
    model = _tiny_timm()
    loaded = from_module(model, input_size=(3, 64, 64), name="tiny-restore")
    x = torch.rand(1, 3, 64, 64)
    model.blocks[1].attn.fused_attn = False  # each module's own flag comes back, not one for all
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    hooks = _hooks(model)
    for method in ("rollout", "chefer"):
        attention_map(loaded, x, method)
        with pytest.raises(InvalidOptionError, match="out of range"):
            attention_map(loaded, x, method, 99)  # raises inside the hooked pass
        assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == flags
        assert _hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    with torch.inference_mode():  # a caller's inference mode: the gradient is still taken
        inside = attention_map(loaded, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)), "chefer")
    assert inside.map.abs().max() > 0
    tv = _tiny_torchvision()
    tv_loaded = from_module(tv, input_size=(3, 64, 64), name="tiny-tv-restore")
    with pytest.raises(InvalidOptionError):
        attention_map(tv_loaded, x, "chefer", 99)
    assert _hooks(tv) == 0


def test_models_these_methods_do_not_take_are_refused_with_a_sentence():
    for name in ("resnet18", "timm/swin_tiny_patch4_window7_224"):
        with pytest.raises(InvalidOptionError, match=r"timm ViT, DeiT, BEiT.*torchvision vit_\*.*Grad-CAM"):
            explore.attribution(name, IMAGE, "rollout", weights="random")
    with pytest.raises(InvalidOptionError, match="LeGrad .*torchvision's VisionTransformer"):
        explore.attribution("timm/vit_tiny_patch16_224", IMAGE, "legrad", weights="random")
    with pytest.raises(InvalidOptionError, match="Unknown method 'rolout'.*Did you mean: rollout"):
        explore.attribution("timm/vit_tiny_patch16_224", IMAGE, "rolout", weights="random")


def test_the_facade_defaults_to_rollout_for_a_vit_and_gives_the_raw_patch_grid():
    view = explore.attribution("timm/vit_tiny_patch16_224", IMAGE, weights="random")
    assert view.method == "rollout" and view.layer is None and view.raw.shape == (14, 14) and view.raw is view.map
    assert view.overlay.shape[1] == 224 and view.overlay.dtype == np.uint8
    assert explore.attribution("resnet18", IMAGE, weights="random").method == "gradcam"
    choices = explore.attribution_choices("timm/deit_tiny_patch16_224", "random")
    assert choices.default_method == "rollout" and choices.attention == ("rollout", "chefer")
    assert explore.attribution_choices("resnet18", "random").attention == ()


def test_legrad_equals_the_reference():
    model = _tiny_torchvision()
    loaded = from_module(model, input_size=(3, 64, 64), name="tiny-legrad")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    # LeGrad from its definition: for each of the last four blocks (here all three), the head applied to the
    # final norm of the mean of the block's output tokens gives that block's class scores; the class's gradient
    # with respect to the block's attention, positive part, averaged over heads and queries, prefix key dropped;
    # then the mean over the blocks.
    with torch.no_grad():
        chosen = int(model(x)[0].argmax())
    maps = []
    for i in range(3):
        out, attention, handles = [], [], []

        def rebuild(module, args, _kwargs, _output, attention=attention):
            e, h = module.embed_dim, module.num_heads
            q, k, v = torch.nn.functional.linear(args[0], module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
            b, n, _ = q.shape
            q, k, v = (t.reshape(b, n, h, e // h).transpose(1, 2) for t in (q, k, v))
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // h), dim=-1)
            attention.append(a)
            return module.out_proj((a @ v).transpose(1, 2).reshape(b, n, e)), None

        handles.append(model.encoder.layers[i].register_forward_hook(lambda _m, _i, o, out=out: out.append(o)))
        handles += [m.register_forward_hook(rebuild, with_kwargs=True) for m in model.modules()
                    if isinstance(m, torch.nn.MultiheadAttention)]
        try:
            with torch.enable_grad():
                model(x.clone().requires_grad_(True))
                block_scores = model.heads(model.encoder.ln(out[0].mean(dim=1)))
                g = torch.autograd.grad(block_scores[0, chosen], attention[i])[0]
        finally:
            for handle in handles:
                handle.remove()
        maps.append(g.clamp_min(0).mean(dim=(1, 2))[0, 1:].reshape(4, 4))
    expected = torch.stack(maps).mean(0)
    assert expected.max() > 0
    found = room.legrad(loaded, x)
    assert found.class_index == chosen and found.method == "legrad"
    torch.testing.assert_close(found.map, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    assert _hooks(model) == 0


# --- the further CAMs ---------------------------------------------------------------------------------

def test_xgradcam_equals_its_definition():
    loaded = load_model("resnet18", "random")
    model = loaded.model
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    kept = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: kept.__setitem__("a", out))
    try:
        with torch.enable_grad():
            scores = model(x.clone().requires_grad_(True))
            chosen = int(scores[0].argmax())
            grad = torch.autograd.grad(scores[0, chosen], kept["a"])[0][0]
    finally:
        handle.remove()
    a = kept["a"][0].detach()
    weights = (a * grad).sum(dim=(1, 2)) / (a.sum(dim=(1, 2)) + 1e-8)  # Σ(A ⊙ ∂y/∂A) / ΣA per channel
    expected = torch.relu((weights[:, None, None] * a).sum(0))
    found = room.class_activation_map(loaded, x, "xgradcam")
    assert found.class_index == chosen
    torch.testing.assert_close(found.map, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


def _tiny_cnn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 5, 3, stride=2, padding=1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 4))
    return from_module(net.eval(), input_size=(3, 32, 32), name="tiny-cnn")


@pytest.mark.parametrize("method", ["sscam", "iscam"])
def test_masking_cams_batched_equal_one_copy_per_pass(method):
    loaded = _tiny_cnn()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    whole = room.class_activation_map(loaded, x, method, 1, "3", batch=32, samples=3)
    ones = room.class_activation_map(loaded, x, method, 1, "3", batch=1, samples=3)
    assert whole.map.shape == (16, 16) and whole.map.max() > 0
    torch.testing.assert_close(whole.map, ones.map, rtol=1e-4, atol=1e-6 * float(whole.map.max()))
    counted = []
    with cancel.on_each_pass(lambda: counted.append(1)):
        room.class_activation_map(loaded, x, method, 1, "3", batch=2, samples=3)
    assert len(counted) == 2 + 3 * math.ceil(5 / 2)  # two, then each of the 3 rounds' 5 masked copies, 2 at a time


def test_iscam_equals_its_definition():
    loaded = _tiny_cnn()
    model = loaded.model
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        a = model[:4](x)[0]  # the layer "3" (ReLU after the second conv): 5×16×16
        base = model(x)[0, 1]
        lo = a.flatten(1).min(1).values[:, None, None]
        unit = (a - lo) / ((a - lo).flatten(1).max(1).values[:, None, None] + 1e-8)  # each map to [0, 1] ...
        masks = torch.nn.functional.interpolate(unit[:, None], (32, 32), mode="bilinear", align_corners=False)  # ... then upsampled
        n, coeff, score = 4, 0.0, torch.zeros(5)
        for step in range(n):  # torchcam's IS-CAM: the mask's coefficient grows by (step + 1) / n each step
            coeff += (step + 1) / n
            score += model(coeff * masks * x)[:, 1] - base
        weights = torch.softmax(score / n, 0)
        expected = torch.relu((weights[:, None, None] * a).sum(0))
    found = room.class_activation_map(loaded, x, "iscam", 1, "3", samples=n)
    torch.testing.assert_close(found.map, expected, rtol=1e-3, atol=1e-5 * float(expected.max()))


def test_noisy_methods_give_the_same_map_twice_and_leave_the_callers_generator_alone():
    loaded = _tiny_cnn()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    for method, layer in (("smoothgradcampp", "2"), ("sscam", "2")):
        torch.manual_seed(123)
        first = room.class_activation_map(loaded, x, method, 2, layer, samples=2)
        after = torch.rand(1)
        torch.manual_seed(123)
        second = room.class_activation_map(loaded, x, method, 2, layer, samples=2)
        assert torch.equal(first.map, second.map) and torch.isfinite(first.map).all()
        torch.manual_seed(123)
        assert torch.equal(torch.rand(1), after)


def test_a_masking_cam_over_the_time_budget_is_refused_before_any_pass(monkeypatch):
    loaded = load_model("resnet18", "random")
    per_pass = budget.forward_cost(loaded).seconds
    monkeypatch.setattr(budget, "retime", lambda _loaded: False)
    monkeypatch.setattr(budget, "REQUEST_SECONDS", (2 + budget.COPY_TIME_FACTOR * 35 * 100.5) * per_pass)  # 100 channels × 35
    calls = []
    monkeypatch.setattr(room, "class_activation_map", lambda *a, **k: calls.append(a))
    with pytest.raises(InvalidOptionError) as e:
        explore.attribution("resnet18", IMAGE, "sscam", "", "layer4", "random")
    message = str(e.value)
    assert message.startswith("SS-CAM at layer4 of ResNet-18 would run 17,920 masked copies (512 channels × 35 noisy "
                              "samples) of the 224×224 input (≈ "), message
    assert "pick a layer with at most 100 channels (such as " in message and "use Grad-CAM (≈ " in message
    assert not calls
    cost = explore.attribution_cost("resnet18", "iscam", "layer1.0.conv1", "random")  # 64 × 10 copies fit
    assert cost.passes == 2 + 10 * 2 and cost.describe().startswith("IS-CAM at `layer1.0.conv1`: 64 channels × 10 steps, ")


def test_attention_methods_are_budgeted(monkeypatch):
    loaded = load_model("timm/vit_tiny_patch16_224", "random")
    layout = vit_layout(loaded)
    rollout, chefer = budget.attention_cost(loaded, layout, "rollout"), budget.attention_cost(loaded, layout, "chefer")
    assert chefer.seconds > rollout.seconds and chefer.nbytes > rollout.nbytes
    monkeypatch.setattr(budget, "retime", lambda _loaded: False)
    monkeypatch.setattr(budget, "REQUEST_BYTES", rollout.nbytes + 1)
    with pytest.raises(InvalidOptionError, match=r"^Gradient-weighted rollout of vit_tiny_patch16_224 would read 12 blocks' "
                                                  r"attention over 197 tokens .*attention rollout fits"):
        explore.attribution(loaded, IMAGE, "chefer")
    assert explore.attribution(loaded, IMAGE, "rollout").method == "rollout"


def test_the_layer_listing_of_a_vit_is_unchanged_by_the_pass():
    loaded = load_model("timm/vit_tiny_patch16_224", "random")
    before = [(i.name, i.shape) for i in layers.list_layers(loaded)]
    attention_map(loaded, torch.rand(1, 3, 224, 224), "chefer")
    assert [(i.name, i.shape) for i in layers.list_layers(loaded)] == before
    assert timm.layers.use_fused_attn() == all(b.attn.fused_attn for b in loaded.model.blocks)
