"""layers.py: which outputs are maps of the image, in which layout, and that each is drawn as the
module computed it — checked on tiny hand-built models and across timm families, against raw
outputs hooked and converted independently in the test."""
from __future__ import annotations

import gc
import threading
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz
from cnnviz import activations, layers, loading, render
from tests.fixtures.tiny import TinyResNet


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt block in miniature: depthwise conv (NCHW), then LayerNorm/Linear on N×H×W×C."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * c, c)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(self.norm(x)))).permute(0, 3, 1, 2)
        return self.pool(x).flatten(1)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int, image: int) -> None:
        super().__init__()
        self.grid_size = (image // patch, image // patch)
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, T, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop((self.q_norm(q) @ k.transpose(-2, -1)).softmax(-1))  # [N, heads, T, T]
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class TinyViT(nn.Module):
    """16 px input, 4 px patches: a 4×4 grid of 12-dim tokens after one class token; a window split."""

    num_prefix_tokens = 1

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(dim, 4, 16)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = Attention(dim, num_heads=2)
        self.windows = nn.Identity()
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        x = x + self.attn(x)
        grid = x[:, 1:].reshape(len(x), 2, 2, 2, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(-1, 2, 2, x.shape[2])
        return self.head(self.windows(grid).mean((1, 2)).reshape(len(x), -1, x.shape[2]).mean(1))


class Cubes(nn.Module):
    """Outputs with C == H == W: the layout must come from the input or the module, not the shape."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops.misc import Permute

        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # sees the image: NCHW
        self.act = nn.ReLU()  # input is a listed NCHW output
        self.to_last = Permute([0, 2, 3, 1])  # says what it produces
        self.norm = nn.LayerNorm(8)  # input is the listed Permute output
        self.loose = nn.Identity()  # input is a functional permute nobody listed: unknowable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.to_last(self.act(self.conv(x))))
        return self.loose(y.permute(0, 3, 1, 2)).mean((1, 2, 3))


def _raw_outputs(model: nn.Module, x: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """Each named module's first output, cloned when produced: the test's own plain hooks."""
    raw, handles = {}, []
    for name, module in model.named_modules():
        if name in names:
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: raw.setdefault(name, o.detach().clone())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return raw


def _by_name(listing: layers.Listing) -> tuple[dict[str, layers.LayerInfo], dict[str, layers.LeftOut]]:
    return {info.name: info for info in listing.layers}, {info.name: info for info in listing.left_out}


def test_channels_last_layers_are_drawn_channel_by_channel():
    torch.manual_seed(0)
    model = ChannelsLastBlock().eval()
    listed, left = _by_name(layers.find_layers(model, (3, 8, 8)))
    assert {n: (info.layout, info.shape) for n, info in listed.items()} == {
        "conv_dw": ("NCHW", (6, 8, 8)),
        "norm": ("NHWC", (6, 8, 8)),
        "fc1": ("NHWC", (12, 8, 8)),
        "act": ("NHWC", (12, 8, 8)),
        "fc2": ("NHWC", (6, 8, 8)),
        "pool": ("NCHW", (6, 1, 1)),
    }
    assert not left
    assert listed["fc1"].label == "fc1 · Linear · 12×8×8, channels-last" and listed["fc1"].nbytes == 12 * 8 * 8 * 4
    x = torch.randn(1, 3, 8, 8)
    with activations.capture(model, [listed["norm"], listed["fc1"]]) as out:
        activations.run(model, x)
    with torch.no_grad():  # reference: the block written out by hand, channel k = raw[0, :, :, k]
        normed = torch.nn.functional.layer_norm(model.conv_dw(x).permute(0, 2, 3, 1), (6,), model.norm.weight, model.norm.bias)
    for k in range(6):
        torch.testing.assert_close(out["norm"][k], normed[0, :, :, k])
    torch.testing.assert_close(out["fc1"][3], model.fc1(normed)[0, :, :, 3].detach())


def test_tokens_form_the_declared_grid_and_attention_internals_are_left_out():
    torch.manual_seed(0)
    model = TinyViT().eval()
    listing = layers.find_layers(model, (3, 16, 16))
    listed, left = _by_name(listing)
    assert listed["patch_embed.proj"].layout == "NCHW" and listed["patch_embed.proj"].shape == (12, 4, 4)
    assert (listed["patch_embed"].layout, listed["patch_embed"].prefix) == ("tokens", 0)  # before the class token
    assert (listed["attn"].layout, listed["attn"].shape, listed["attn"].prefix) == ("tokens", (12, 4, 4), 1)
    assert listed["attn.qkv"].shape == (36, 4, 4)
    assert listed["attn"].label == "attn · Attention · 12×4×4, patch tokens, 1 prefix token set aside"
    assert left["attn.q_norm"].reason == "heads"  # [1, 2, 17, 6]
    assert left["attn.attn_drop"].reason == "heads"  # [1, 2, 17, 17]: square, but its "channels" are heads
    assert left["windows"].reason == "windows"  # [4, 2, 2, 12]
    assert "head" not in listed and "head" not in left  # a vector is neither

    x = torch.randn(1, 3, 16, 16)
    store, _ = activations.capture_layers(SimpleNamespace(model=model), list(listing.layers), x, with_logits=False)
    raw = _raw_outputs(model, x, {"attn", "patch_embed"})
    # reference: tokens after the class token, row by row on the 4×4 grid, channel first
    torch.testing.assert_close(store["attn"], raw["attn"][0, 1:, :].reshape(4, 4, 12).permute(2, 0, 1))
    torch.testing.assert_close(store["patch_embed"], model.patch_embed.proj(x)[0].detach())  # = the conv's map


def test_cubes_take_their_layout_from_input_or_module_or_are_left_out():
    listed, left = _by_name(layers.find_layers(Cubes().eval(), (3, 16, 16)))
    assert {n: info.layout for n, info in listed.items()} == {"conv": "NCHW", "act": "NCHW", "to_last": "NHWC", "norm": "NHWC"}
    assert left["loose"].reason == "no map"


class _Loaded:
    """What the listing reads of a LoadedModel (weak-referenceable, like the real one)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        self.model, self.input_size, self.device, self.lock = model, input_size, "cpu", threading.RLock()
        self.derived: dict = {}

    memo = loading.LoadedModel.memo  # where per-model results are kept


def test_listing_note_explains_what_a_transformer_leaves_out():
    note = layers.listing_note(_Loaded(TinyViT().eval(), (3, 16, 16)))
    assert "2 per-head tensors" in note and "1 tensor of windows" in note
    assert "Patch tokens are drawn on their patch grid (4×4) with the class and other prefix tokens set aside." in note
    assert layers.listing_note(_Loaded(TinyResNet().eval(), (3, 16, 16))) is None


class _Probe(nn.Module):
    """A 1×1 conv that remembers its output weakly, and checks the output of the probe two back is freed."""

    def __init__(self, refs: list) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.refs = refs
        self.freed_in_time: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if len(self.refs) >= 2:
            gc.collect()
            self.freed_in_time.append(self.refs[-2]() is None)
        self.refs.append(weakref.ref(out))
        return out


def test_listing_does_not_keep_outputs_alive():
    refs: list = []
    probes = [_Probe(refs) for _ in range(5)]
    model = nn.Sequential(*probes).eval()
    listed = layers.find_layers(model, (4, 6, 6)).layers
    assert len(listed) == 2 * 5 and all(info.shape == (4, 6, 6) for info in listed)
    assert all(all(p.freed_in_time) for p in probes[2:])  # an earlier map was gone while the pass went on


class _LateInPlace(nn.Module):
    """``a``'s output is changed in place after ``b`` runs, while it is still alive; ``b``'s never is."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b(a)
        a.add_(b)
        return self.c(a)


def test_outputs_changed_in_place_later_are_marked_overwritten():
    listed, _ = _by_name(layers.find_layers(_LateInPlace().eval(), (3, 4, 4)))
    assert {n: info.overwritten for n, info in listed.items()} == {"a": True, "b": False, "c": False}


def test_get_layer_default_is_the_first_conv_and_unknown_names_suggest():
    loaded = cnnviz.load_model("resnet18", "random")
    assert layers.get_layer(loaded, None).name == "conv1"
    with pytest.raises(cnnviz.UnknownLayerError, match="layer1"):
        layers.get_layer(loaded, "layer_1")


# --- timm families: every listed layer draws, layouts right, maps equal independently converted outputs ----------


def _tokens(out: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    return out[0, prefix:, :].reshape(side, side, out.shape[2]).permute(2, 0, 1)


def _vit(model):
    return model.num_prefix_tokens, model.patch_embed.grid_size[0]


FAMILIES = {
    # model: {layer: (layout, reference from the raw output)} and layers that must be left out (with reason)
    "convnext_tiny": (
        {
            "stages.0.blocks.0.conv_dw": ("NCHW", lambda m, o: o[0]),
            "stages.0.blocks.0.norm": ("NHWC", lambda m, o: o[0].permute(2, 0, 1)),
            "stages.3.blocks.2.mlp.fc1": ("NHWC", lambda m, o: o[0].permute(2, 0, 1)),
        },
        {},
    ),
    "swin_tiny_patch4_window7_224": (
        {
            "layers.0.blocks.0.norm1": ("NHWC", lambda m, o: o[0].permute(2, 0, 1)),
            "layers.0.blocks.0.mlp.fc1": ("tokens", lambda m, o: _tokens(o, 0, m.patch_embed.grid_size[0])),
            "layers.3.blocks.1": ("NHWC", lambda m, o: o[0].permute(2, 0, 1)),
        },
        {"layers.0.blocks.0.attn": "windows", "layers.3.blocks.0.attn.softmax": "heads"},
    ),
    "maxvit_tiny_tf_224": (
        {
            "stages.0.blocks.0.conv.conv2_kxk": ("NCHW", lambda m, o: o[0]),
            "stages.0.blocks.0.attn_block.mlp.fc1": ("NHWC", lambda m, o: o[0].permute(2, 0, 1)),
        },
        {"stages.0.blocks.0.attn_block.attn": "windows"},
    ),
    "edgenext_xx_small": (
        {"stages.0.blocks.0.norm": ("NHWC", lambda m, o: o[0].permute(2, 0, 1))},
        {"stages.1.blocks.1.xca.attn_drop": "heads"},
    ),
    "mobilevit_xxs": (
        {"stages.3.1.conv_kxk": ("NCHW", lambda m, o: o[0])},
        {"stages.3.1.transformer.0": "windows"},
    ),
    "vit_tiny_patch16_224": (
        {"blocks.0": ("tokens", lambda m, o: _tokens(o, *_vit(m))), "norm": ("tokens", lambda m, o: _tokens(o, *_vit(m)))},
        {"blocks.0.attn.q_norm": "heads", "blocks.0.attn.k_norm": "heads"},
    ),
    "deit_tiny_patch16_224": (
        {"blocks.5.mlp.fc1": ("tokens", lambda m, o: _tokens(o, *_vit(m)))},
        {"blocks.5.attn.q_norm": "heads"},
    ),
    "eva02_tiny_patch14_224": (
        {"blocks.0": ("tokens", lambda m, o: _tokens(o, *_vit(m)))},
        {"blocks.0.attn.q_norm": "heads"},
    ),
    "crossvit_tiny_240": (
        {  # two branches: 240 px / 12 px patches and 224 px / 16 px patches, one class token each
            "blocks.0.blocks.0.0": ("tokens", lambda m, o: _tokens(o, 1, int(m.patch_embed[0].num_patches**0.5))),
            "blocks.0.blocks.1.0": ("tokens", lambda m, o: _tokens(o, 1, int(m.patch_embed[1].num_patches**0.5))),
        },
        {"blocks.0.fusion.0.attn.attn_drop": "heads", "blocks.0.fusion.0.attn.wq": "no map"},
    ),
    "efficientnet_b0": ({"blocks.1.0.conv_dw": ("NCHW", lambda m, o: o[0])}, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(FAMILIES))
def test_timm_family_layers_draw_truthfully(arch):
    references, expected_left_out = FAMILIES[arch]
    loaded = cnnviz.load_model(f"timm/{arch}", "random")
    found = cnnviz.list_layers(loaded)
    _, left = _by_name(layers._listing(loaded))
    listed = {info.name: info for info in found}
    torch.manual_seed(0)
    x = torch.randn(1, *loaded.input_size)
    with loaded.lock:
        store, _ = activations.capture_layers(loaded, found, x, with_logits=False)
    for layer in found:  # every listed layer is a square map and draws
        maps = store[layer.name]
        assert tuple(maps.shape) == layer.shape and layer.shape[1] == layer.shape[2], layer.label
        grid = render.render_feature_maps(maps[:64].numpy())
        assert grid.dtype == np.uint8 and grid.ndim == 3, layer.label
    raw = _raw_outputs(loaded.model, x, set(references))
    for name, (layout, reference) in references.items():
        assert listed[name].layout == layout, listed[name].label
        torch.testing.assert_close(store[name], reference(loaded.model, raw[name]), msg=name)
    for name, reason in expected_left_out.items():
        assert name not in listed and left[name].reason == reason, name
    loading.clear_cache()


# --- order and pass-through modules ----------------------------------------------------------------------------


class _ConvBnAct(nn.Module):
    """timm's BatchNormAct2d in miniature: the block finishes after its child ``act``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)  # returns its input, changed: a real layer
        self.drop = nn.Dropout(0.5)  # eval: hands its input on untouched
        self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(self.drop(self.act(self.conv(x))))


def test_layers_are_listed_parents_first_and_pass_through_modules_left_out():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), _ConvBnAct(), nn.Identity(), nn.Conv2d(4, 2, 1)).eval()
    listing = layers.find_layers(model, (3, 8, 8))
    # forward order by start: the block "1" before its children; Identity/Dropout give their input back
    assert [info.name for info in listing.layers] == ["0", "1", "1.conv", "1.act", "3"]
    assert not listing.left_out  # not "left out" either: nothing to explain in the note
    assert listing.layers[2].overwritten  # the in-place ReLU changed conv's output


def test_timm_batchnorm_act_lists_the_block_before_its_activation():
    names = [info.name for info in cnnviz.list_layers(cnnviz.load_model("timm/efficientnet_b0", "random"))]
    assert names[:3] == ["conv_stem", "bn1", "bn1.act"]  # BatchNormAct2d finishes after its act, starts before
    assert names.index("blocks.1") < names.index("blocks.1.0") < names.index("blocks.1.0.conv_pw")
    assert not any(n.endswith((".drop", ".drop_path", ".drop_block")) for n in names)


def test_listing_and_capture_work_inside_a_callers_inference_mode(coffee):
    """A notebook that wraps everything in torch.inference_mode() must still list layers and capture maps
    (both need version counters, which inference tensors do not have)."""
    import cnnviz
    from cnnviz import preprocess

    loading.clear_cache()
    with torch.inference_mode():
        loaded = cnnviz.load_model("resnet18", "random")
        assert cnnviz.list_layers(loaded)[0].name == "conv1"
        view = cnnviz.feature_maps("resnet18", coffee, "layer1.0.bn1", "random")
    x = preprocess.to_input(loaded, preprocess.open_image(coffee))
    with torch.no_grad():
        m = loaded.model
        reference = m.layer1[0].bn1(m.layer1[0].conv1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))[0]
    torch.testing.assert_close(view.maps, reference)
