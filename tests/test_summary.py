"""Tests for cnnviz.summary: golden text, MACs against textbook formulas and published figures
(attention included), parameter totals, depth and names, failures, and that summarize leaves the
model as it found it.

Random weights only (no downloads). Set CNNVIZ_UPDATE_GOLDEN=1 to rewrite tests/golden/ after a
deliberate format change, then check the new file by eye.
"""
from __future__ import annotations

import csv
import io
import os
import warnings
from collections import OrderedDict, defaultdict
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from cnnviz.errors import InvalidOptionError
from cnnviz.summary import LayerRow, Summary, summarize

GOLDEN = Path(__file__).parent / "golden" / "tiny_summary.txt"
TINY_INPUT = (3, 32, 32)
CSV_HEADER = ["name", "type", "depth", "output_shape", "kernel", "stride", "params", "macs"]

TORCHVISION_MODELS = [
    "alexnet", "vgg16", "resnet18", "resnet50", "googlenet", "densenet121", "squeezenet1_1",
    "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny",
]
TIMM_MODELS = [
    "resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "regnety_008",
    "cspdarknet53", "rexnet_100", "ghostnet_100", "ese_vovnet19b_dw", "efficientnet_lite0",
]


# --- fixtures and independent references -----------------------------------------------------


def tiny_model() -> nn.Module:
    """Conv(stride 2) → ReLU → block[grouped conv, BN, max-pool] → avg-pool → flatten → Linear."""
    block = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False),
            bn=nn.BatchNorm2d(16),
            pool=nn.MaxPool2d(2),
        )
    )
    layers = OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, stride=2),
        relu=nn.ReLU(),
        block=block,
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(16, 10),
    )
    return nn.Sequential(layers).eval()


class ReuseAndFunctional(nn.Module):
    """One conv called twice, a ModuleList iterated in forward, and a bare matmul no module owns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)])
        self.weight = nn.Parameter(torch.zeros(4 * 8 * 8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.conv(x))
        for block in self.blocks:
            x = block(x)
        return x.flatten(1) @ self.weight


class TokenAttention(nn.Module):
    """The C×H×W input as H·W tokens of C channels through ``nn.MultiheadAttention``, self-attending."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        return self.attn(tokens, tokens, tokens, need_weights=False)[0]


class CrossAttention(nn.Module):
    """``F.scaled_dot_product_attention`` with 2 heads, queries from the first row of pixels.

    Input C×H×W: keys and values from all H·W pixels, C/2 channels per head. Values can be
    narrower (every ``value_step``-th channel): a strided view, which CPU leaves to the math path
    instead of its fused kernel.
    """

    def __init__(self, value_step: int) -> None:
        super().__init__()
        self.value_step = value_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2).reshape(batch, -1, 2, channels // 2).transpose(1, 2)
        tokens = tokens.contiguous()  # the fused kernel wants unit stride along channels
        query = tokens[:, :, : x.shape[-1]]
        return F.scaled_dot_product_attention(query, tokens, tokens[..., :: self.value_step])


class TokenFromParameter(nn.Module):
    """A learnt class token, expanded without gradients and handed to a submodule (timm PiT)."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token = self.token.expand(x.shape[0], -1, -1)
        return self.head(token) + x.mean((2, 3))[:, None, :]


class OpsSeen(TorchDispatchMode):
    """Names of the aten ops that reach the dispatcher, to tell which attention path ran."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.names.add(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv_macs(c_in: int, c_out: int, h_out: int, w_out: int, kernel: int, groups: int = 1) -> int:
    """Textbook: Cout·Hout·Wout · Cin/groups · kh·kw (no bias)."""
    return c_out * h_out * w_out * (c_in // groups) * kernel * kernel


def tiny_reference_macs() -> dict[str, int]:
    """MACs of the tiny model's layers, from the formulas alone."""
    side = conv_out(TINY_INPUT[1], 3, stride=2)  # 15
    conv1 = conv_macs(3, 8, side, side, 3)
    block_conv = conv_macs(8, 16, side, side, 3, groups=2)
    fc = 16 * 10
    return {
        "conv1": conv1, "relu": 0, "block": block_conv, "block.conv": block_conv, "block.bn": 0,
        "block.pool": 0, "pool": 0, "flatten": 0, "fc": fc,
    }


def attention_macs(query_len: int, key_len: int, qk_dim: int, v_dim: int) -> int:
    """Q·Kᵀ (Lq·Lk·d) plus weights·V (Lq·Lk·dv), summed over heads (d and dv are totals)."""
    return query_len * key_len * (qk_dim + v_dim)


def vit_reference_macs(depth: int, dim: int, mlp_dim: int, patch: int, side: int, classes: int) -> int:
    """A plain ViT with a class token: patch conv, per block qkv + attention + proj + MLP, head."""
    patches = (side // patch) ** 2
    tokens = patches + 1
    embed = patches * dim * 3 * patch * patch
    block = tokens * dim * 3 * dim + attention_macs(tokens, tokens, dim, dim) + tokens * dim * dim
    block += 2 * tokens * dim * mlp_dim
    return embed + depth * block + dim * classes


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(m._backward_pre_hooks) + len(m._state_dict_hooks) + len(m._load_state_dict_pre_hooks)
        for m in model.modules()
    )


def global_hook_count() -> int:
    module = torch.nn.modules.module
    return len(module._global_forward_hooks) + len(module._global_forward_pre_hooks)


def torchvision_model(name: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet's init_weights FutureWarning
        return torchvision.models.get_model(name, weights=None).eval()


def timm_model(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=False).eval()


@pytest.fixture(scope="module")
def tiny_summary() -> Summary:
    return summarize(tiny_model(), TINY_INPUT)


# --- golden text and CSV ---------------------------------------------------------------------


def test_text_matches_golden(tiny_summary: Summary) -> None:
    text = tiny_summary.to_text()
    if os.environ.get("CNNVIZ_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text + "\n", encoding="utf-8")
    assert text + "\n" == GOLDEN.read_text(encoding="utf-8")


def test_csv_round_trips(tiny_summary: Summary) -> None:
    lines = list(csv.reader(io.StringIO(tiny_summary.to_csv())))
    assert lines[0] == CSV_HEADER
    assert len(lines) == 1 + len(tiny_summary.rows)
    for line, row in zip(lines[1:], tiny_summary.rows):
        expected = [row.name, row.type, str(row.depth), "×".join(map(str, row.output_shape)),
                    row.kernel, row.stride, str(row.params), str(row.macs)]
        assert line == expected
    assert lines[1] == ["conv1", "Conv2d", "1", "8×15×15", "3×3", "2×2", "224", "48600"]


# --- MACs ------------------------------------------------------------------------------------


def test_macs_match_textbook_formulas_row_by_row(tiny_summary: Summary) -> None:
    reference = tiny_reference_macs()
    assert {row.name: row.macs for row in tiny_summary.rows} == reference
    leaves = ("conv1", "block.conv", "fc")
    assert tiny_summary.total_macs == sum(reference[name] for name in leaves)


def test_rows_have_shapes_kernels_and_strides(tiny_summary: Summary) -> None:
    rows = {row.name: row for row in tiny_summary.rows}
    assert rows["conv1"] == LayerRow("conv1", "Conv2d", 1, (8, 15, 15), "3×3", "2×2", 224, 48600)
    assert rows["block.pool"].output_shape == (16, 7, 7)
    assert (rows["block.pool"].kernel, rows["block.pool"].stride) == ("2×2", "2×2")
    assert (rows["block"].kernel, rows["block"].stride) == ("", "")
    assert (rows["fc"].output_shape, rows["flatten"].output_shape) == ((10,), (16,))


def test_reused_module_gets_a_row_per_call_and_totals_count_functional_ops() -> None:
    summary = summarize(ReuseAndFunctional(), (4, 8, 8))
    conv = conv_macs(4, 4, 8, 8, 3)
    pointwise = conv_macs(4, 4, 8, 8, 1)
    matmul = 4 * 8 * 8 * 5
    assert [(row.name, row.macs) for row in summary.rows] == [
        ("conv", conv), ("conv", conv),
        ("blocks", 2 * pointwise),  # a ModuleList never runs itself: its children's MACs
        ("blocks.0", pointwise), ("blocks.1", pointwise),
    ]
    assert summary.rows[2].output_shape == ()
    assert summary.total_macs == 2 * conv + 2 * pointwise + matmul


def test_per_module_macs_agree_with_flop_counter_attribution() -> None:
    model = torchvision_model("resnet18")
    summary = summarize(model, (3, 224, 224), depth=99)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 224, 224))
    prefix = f"{type(model).__name__}."  # torch 2.14 keys: "ResNet.layer1.0.conv1"
    reference = {
        key.removeprefix(prefix): sum(counts.values()) // 2
        for key, counts in counter.get_flop_counts().items()
        if key.startswith(prefix)
    }
    per_module: dict[str, int] = defaultdict(int)
    for row in summary.rows:
        per_module[row.name] += row.macs
    assert {name: macs for name, macs in per_module.items() if macs} == reference
    assert summary.total_macs == counter.get_total_flops() // 2


@pytest.mark.parametrize("heads", [2, 3])  # nn.MultiheadAttention's fast path needs an even count
def test_multihead_attention_macs_match_formula_on_both_paths(heads: int) -> None:
    channels, side = 12, 4
    model = TokenAttention(channels, heads).eval()
    tokens = side * side
    with torch.inference_mode(), OpsSeen() as seen:
        model(torch.rand(1, channels, side, side))
    assert ("_native_multi_head_attention" in seen.names) == (heads % 2 == 0)
    projections = 4 * tokens * channels * channels  # q, k, v and output
    expected = projections + attention_macs(tokens, tokens, channels, channels)
    summary = summarize(model, (channels, side, side))
    assert summary.total_macs == expected
    assert summary.rows[0].name == "attn" and summary.rows[0].macs == expected


@pytest.mark.parametrize("value_step", [1, 2])
def test_scaled_dot_product_attention_macs_match_formula(value_step: int) -> None:
    channels, height, width = 16, 3, 5  # 2 heads of 8 channels; 5 queries, 15 keys
    summary = summarize(CrossAttention(value_step), (channels, height, width))
    assert summary.total_macs == attention_macs(width, height * width, channels, channels // value_step)


def test_timm_vit_macs_match_textbook_formula() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()
    expected = vit_reference_macs(depth=2, dim=192, mlp_dim=768, patch=16, side=224, classes=1000)
    assert summarize(model, (3, 224, 224), depth=1).total_macs == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["alexnet", "resnet50", "efficientnet_b0", "convnext_tiny", "swin_t", "maxvit_t", "vit_b_16"],
)
def test_torchvision_macs_match_weights_meta(name: str) -> None:
    published = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]  # GMACs, "GFLOPS"
    total = summarize(torchvision_model(name), (3, 224, 224), depth=1).total_macs
    assert total / 1e9 == pytest.approx(published, rel=0.03)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "published_gmacs"),
    [  # timm's own benchmark table (results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv, infer_gmacs)
        ("convnext_tiny", 4.47),  # torchinfo alone reports 0.32
        ("vit_tiny_patch16_224", 1.26),
        ("deit_tiny_patch16_224", 1.26),
        ("pit_ti_224", 0.70),
        ("crossvit_tiny_240", 1.57),
        ("swin_tiny_patch4_window7_224", 4.51),
        ("maxvit_tiny_tf_224", 5.6),
    ],
)
def test_timm_macs_match_published_figures(name: str, published_gmacs: float) -> None:
    model = timm_model(name)
    total = summarize(model, model.pretrained_cfg["input_size"], depth=1).total_macs
    assert total / 1e9 == pytest.approx(published_gmacs, rel=0.03)


# --- parameters ------------------------------------------------------------------------------


def test_total_params_equal_numel(tiny_summary: Summary) -> None:
    model = tiny_model()
    total = sum(p.numel() for p in model.parameters())
    assert (tiny_summary.total_params, tiny_summary.trainable_params) == (total, total)
    assert tiny_summary.non_trainable_params == 0
    assert tiny_summary.params_mb == pytest.approx(total * 4 / 1e6)


def test_frozen_params_are_non_trainable() -> None:
    model = tiny_model()
    for p in [*model.conv1.parameters(), model.block.bn.weight]:
        p.requires_grad_(False)
    frozen = 8 * 3 * 3 * 3 + 8 + 16
    summary = summarize(model, TINY_INPUT)
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.non_trainable_params == frozen
    assert summary.trainable_params == summary.total_params - frozen


# --- depth and names -------------------------------------------------------------------------


def test_depth_limits_rows_and_names_are_qualified() -> None:
    model = torchvision_model("resnet18")
    modules = dict(model.named_modules())
    by_depth = {depth: summarize(model, (3, 224, 224), depth=depth) for depth in (1, 2, 3)}
    assert [row.name for row in by_depth[1].rows] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc",
    ]
    assert len(by_depth[1].rows) < len(by_depth[2].rows) < len(by_depth[3].rows)
    for depth, summary in by_depth.items():
        assert summary.total_macs == by_depth[1].total_macs
        for row in summary.rows:
            assert row.name in modules and row.name != ""
            assert row.type == type(modules[row.name]).__name__
            assert row.depth == row.name.count(".") + 1 <= depth


# --- the model is left as it was -------------------------------------------------------------


def test_no_hooks_left_and_training_flags_restored() -> None:
    model = tiny_model().train()
    model.block.bn.eval()  # a mixed mode must come back as it was, not as model.train()
    running_mean = model.block.bn.running_mean.clone()
    hooks_before = global_hook_count()
    summarize(model, TINY_INPUT)
    assert hook_count(model) == 0 and global_hook_count() == hooks_before
    assert {name: m.training for name, m in model.named_modules()} == {
        name: name != "block.bn" for name, _ in model.named_modules()
    }
    assert torch.equal(model.block.bn.running_mean, running_mean)  # ran in eval mode


def test_failed_forward_raises_plain_error_and_cleans_up() -> None:
    model = tiny_model().train()
    with pytest.raises(InvalidOptionError, match="could not run on a 3×2×2 input"):
        summarize(model, (3, 2, 2))
    assert hook_count(model) == 0 and model.training and model.block.bn.training


def test_failure_says_which_layer_raised_and_suggests_no_size_it_does_not_know() -> None:
    with pytest.raises(InvalidOptionError) as raised:
        summarize(tiny_model(), (3, 2, 2))
    message = str(raised.value)
    assert message.startswith("Sequential could not run on a 3×2×2 input: RuntimeError in layer conv1: ")
    assert "size is" not in message and "3×224×224" not in message


def test_failure_suggests_the_models_own_input_size_only_when_it_differs() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1)
    own_size = r"in layer patch_embed: .*Its own input size is 3×224×224\.$"
    with pytest.raises(InvalidOptionError, match=own_size):
        summarize(model, (3, 64, 64))
    model = tiny_model()
    model.pretrained_cfg = {"input_size": (3, 2, 2)}
    with pytest.raises(InvalidOptionError) as raised:
        summarize(model, (3, 2, 2))
    assert "own input size" not in str(raised.value)


def test_parameter_view_handed_to_a_submodule_is_summarised() -> None:
    summary = summarize(TokenFromParameter(), (3, 2, 2))
    assert summary.total_macs == 4 * 3
    assert [(row.name, row.output_shape, row.macs) for row in summary.rows] == [("head", (1, 3), 12)]


@pytest.mark.parametrize("input_size", [(3, 32), (3, 0, 32), (3, 32.0, 32)])
def test_invalid_input_size_raises(input_size: tuple) -> None:
    with pytest.raises(InvalidOptionError, match="Input size"):
        summarize(tiny_model(), input_size)


def test_invalid_depth_raises() -> None:
    with pytest.raises(InvalidOptionError, match="Depth"):
        summarize(tiny_model(), TINY_INPUT, depth=0)


def test_input_follows_model_dtype() -> None:
    summary = summarize(tiny_model().double(), TINY_INPUT)
    assert summary.total_macs == sum(tiny_reference_macs()[n] for n in ("conv1", "block.conv", "fc"))
    assert summary.params_mb == pytest.approx(summary.total_params * 8 / 1e6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_cuda_gets_cuda_input() -> None:
    model = torchvision_model("resnet18")
    on_cpu = summarize(model, (3, 224, 224))
    on_gpu = summarize(model.cuda(), (3, 224, 224))
    assert on_gpu.rows == on_cpu.rows and on_gpu.total_macs == on_cpu.total_macs
    assert next(model.parameters()).is_cuda


# --- every model the app offers --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "name"),
    [("torchvision", n) for n in TORCHVISION_MODELS] + [("timm", n) for n in TIMM_MODELS],
)
def test_summarize_every_registry_model(source: str, name: str) -> None:
    build = torchvision_model if source == "torchvision" else timm_model
    try:
        with torch.device("meta"):  # only structure is checked: shapes, counts and MACs need no values
            model = build(name)
    except NotImplementedError:  # torchvision's RegNet builder reads numbers (.tolist()) as it builds
        model = build(name)
    modules = dict(model.named_modules())
    summary = summarize(model, (3, 224, 224))
    assert summary.rows and all(row.name in modules for row in summary.rows)
    assert all(row.output_shape for row in summary.rows)
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert hook_count(model) == 0 and not model.training
    if source == "torchvision":  # torchvision's own figure ("_ops", GMACs), shipped in its source
        published = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]
        assert summary.total_macs / 1e9 == pytest.approx(published, rel=0.03)


def test_a_stop_inside_the_summary_pass_is_a_stop_not_a_model_failure(monkeypatch):
    import torchvision

    from cnnviz import cancel, hooks

    monkeypatch.setattr(hooks, "STOP_CHECK_EVERY_S", 0.0)
    model = torchvision.models.get_model("resnet18", weights=None)
    calls = iter(range(10_000))
    with cancel.stop_when(lambda: "superseded" if next(calls) > 20 else None):
        with pytest.raises(cancel.Stopped, match="superseded"), hooks.interruptible(model):
            summarize(model, (3, 64, 64), depth=1)
    assert all(not m._forward_pre_hooks for m in model.modules())
