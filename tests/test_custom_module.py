"""Your own architecture (issue 17 §3): a hand-written module no registry knows, given with
``cnnviz.from_module``, works in every view, and each view equals a computation written here with plain
forward hooks on an independent copy of the module (same weights, built again)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz import cli, loading
from cnnviz.errors import CheckpointError, InvalidOptionError, UnknownModelError
from tests.fixtures import custom_net

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def handle():
    yield custom_net.factory()
    loading.clear_modules()  # the app built later in this process opens on the default model again


def reference_input(path) -> torch.Tensor:
    """The picture as from_module documents it, written out by hand: cover 96×128 keeping the aspect,
    crop the centre, scale to [0, 1], ImageNet mean/std. ``Tensor[1,3,96,128]``."""
    image = Image.open(path).convert("RGB")
    height, width = custom_net.INPUT_SIZE[1:]
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    pixels = np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.float32) / 255
    return ((torch.from_numpy(pixels).permute(2, 0, 1) - MEAN) / STD).unsqueeze(0)


def reference_output(path, layer: str) -> torch.Tensor:
    """``layer``'s output for the picture, by a forward hook on a fresh build; NHWC turned to C×H×W."""
    net = custom_net.build()
    seen = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach()))
    try:
        with torch.no_grad():
            net(reference_input(path))
    finally:
        handle.remove()
    out = seen["out"][0]
    return out.permute(2, 0, 1) if layer.startswith("block.") and layer != "block.dwconv" else out


def test_the_handle_is_a_model_of_the_library(handle):
    assert handle.spec.key == "module/custom-net" and handle.input_size == (3, 96, 128)
    assert handle.categories == custom_net.LABELS and handle.weights.pretrained
    assert cnnviz.load_model("module/custom-net") is handle and cnnviz.load_model(handle) is handle
    assert cnnviz.get_spec("Module/Custom-Net") == handle.spec  # names ignore case, as every model's do
    from cnnviz import explore

    assert explore.curated_models()[0] == (handle.spec.label, "module/custom-net")  # first in the picker
    assert explore.startup_model().model == "module/custom-net"  # and the page opens on it
    layers = {info.name: info for info in cnnviz.list_layers(handle)}
    assert layers["res.conv2"].shape == (16, 48, 64) and layers["res.conv2"].layout == "NCHW"
    assert layers["down.dw"].shape == (16, 24, 32)
    assert layers["block.norm"].layout == "NHWC" and layers["block.pwconv1"].shape == (128, 24, 32)


@pytest.mark.parametrize("layer", ["stem.0", "res.conv2", "res", "down.dw", "block.norm", "block.pwconv1", "block"])
def test_feature_maps_equal_a_forward_hook(handle, coffee, layer):
    view = cnnviz.feature_maps(handle, coffee, layer)
    expected = reference_output(coffee, layer)
    assert view.maps.shape == expected.shape and view.input_size == (96, 128)
    torch.testing.assert_close(view.maps, expected, rtol=1e-4, atol=1e-5)
    assert view.image.ndim == 3 and view.image.dtype == np.uint8
    assert [p.label for p in view.predictions][:1] == [cnnviz.predict(handle, coffee)[0].label]


def test_channel_and_statistics_equal_a_forward_hook(handle, coffee):
    expected = reference_output(coffee, "block.norm")
    view = cnnviz.channel(handle, coffee, "block.norm", 5)
    torch.testing.assert_close(view.values, expected[5], rtol=1e-4, atol=1e-5)
    assert view.picture.shape[:2] == (96, 128)  # the picture the model saw, not a square
    stats = cnnviz.layer_stats(handle, coffee, "block.norm").stats
    np.testing.assert_allclose(stats.mean, expected.double().mean(dim=(1, 2)).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.max, expected.amax(dim=(1, 2)).double().numpy(), rtol=1e-5)


def test_predictions_are_the_modules_softmax_with_its_labels(handle, coffee):
    with torch.no_grad():
        probabilities = torch.softmax(custom_net.build()(reference_input(coffee))[0], 0)
    top = torch.topk(probabilities, 5)
    predictions = cnnviz.predict(handle, coffee)
    assert [p.label for p in predictions] == [custom_net.LABELS[i] for i in top.indices]
    np.testing.assert_allclose([p.probability for p in predictions], top.values.numpy(), rtol=1e-4)


def test_filters_are_the_modules_own_kernels(handle):
    net = custom_net.build()
    view = cnnviz.filter_grid(handle)
    assert view.conv.name == "stem.0" and torch.equal(view.filters.weight, net.stem[0].weight.detach())
    depthwise = cnnviz.filter_grid(handle, layer="down.dw")
    assert depthwise.conv.depthwise and torch.equal(depthwise.filters.weight, net.down.dw.weight.detach())


def test_gradcam_equals_a_hook_computation(handle, coffee):
    view = cnnviz.attribution(handle, coffee, "gradcam", target="", layer="block")
    net, seen = custom_net.build(), {}
    forward = net.block.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    try:
        logits = net(reference_input(coffee))
        top = int(logits.argmax())
        (grads,) = torch.autograd.grad(logits[0, top], seen["a"])
    finally:
        forward.remove()
    weights = grads[0].mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((weights * seen["a"][0]).sum(0)).detach()
    assert view.class_index == top and view.label == custom_net.LABELS[top]
    assert view.map.shape == (24, 32)
    assert cam.max() > 0
    np.testing.assert_allclose(view.map, cam.numpy(), rtol=1e-3, atol=1e-3 * float(cam.max()))


def test_architecture_lists_the_modules_blocks(handle):
    summary = cnnviz.architecture(handle, depth=2)
    names = [row.name for row in summary.rows]
    assert {"stem", "res", "down", "block", "head"} <= set(names)
    net = custom_net.build()
    assert summary.total_params == sum(p.numel() for p in net.parameters())


def test_compare_the_module_with_its_seeded_random_copy(handle, coffee):
    view = cnnviz.compare(handle, handle, coffee, "pretrained", "random", "stages")
    assert view.a.weights.pretrained and not view.b.weights.pretrained
    assert view.pairs and all(pair.a.ndim == 3 and pair.b.ndim == 3 for pair in view.pairs)
    conv = "stem.0.weight"
    random_a = cnnviz.load_model(handle, "random").model.state_dict()[conv]
    custom_net.factory()  # the same name given again: its old random copy is forgotten, a new one made
    random_b = cnnviz.load_model("module/custom-net", "random").model.state_dict()[conv]
    assert torch.equal(random_a, random_b)  # seeded by the name
    assert not torch.equal(random_a, handle.model.state_dict()[conv])
    assert handle.model.state_dict()[conv].equal(custom_net.build().state_dict()[conv])  # the module untouched


def test_mistakes_get_sentences():
    net = custom_net.build()
    with pytest.raises(InvalidOptionError, match=r"module/linear does not run on an input of \(3, 96, 128\)"):
        cnnviz.from_module(torch.nn.Linear(5, 2), input_size=(3, 96, 128), name="linear")
    with pytest.raises(InvalidOptionError, match=r"input_size is \(3, height, width\)"):
        cnnviz.from_module(net, input_size=(4, 96, 128))
    with pytest.raises(InvalidOptionError, match="10 class outputs but 3 labels"):
        cnnviz.from_module(net, input_size=custom_net.INPUT_SIZE, labels=["a", "b", "c"], name="labels")
    with pytest.raises(InvalidOptionError, match="torch.nn.Module"):
        cnnviz.from_module("resnet18")
    with pytest.raises(UnknownModelError, match="No module is called"):
        cnnviz.load_model("module/never-given")
    with pytest.raises(CheckpointError, match="module given in Python"):
        cnnviz.load_checkpoint("module/custom-net", "x.safetensors")


def test_serve_model_imports_the_factory_and_reads_checkpoint_and_labels(handle, tmp_path, coffee):
    """``cnnviz serve --model pkg.mod:factory --checkpoint F --labels L``: the operator's factory, the safe
    reader's weights (not the factory's) and the labels file's names."""
    import safetensors.torch

    trained = custom_net.build()
    with torch.no_grad():
        trained.head.bias.add_(3.0 * torch.arange(10))  # weights the factory does not make
    path = tmp_path / "trained.safetensors"
    safetensors.torch.save_file(trained.state_dict(), str(path))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"kind {i}" for i in range(10)) + "\n", encoding="utf-8")
    loaded = cli.serve_model("tests.fixtures.custom_net:factory", str(path), str(labels))
    assert loaded.spec.key == "module/custom-net" and loaded.input_size == custom_net.INPUT_SIZE
    assert loaded.categories == tuple(f"kind {i}" for i in range(10))
    assert torch.equal(loaded.model.head.bias, trained.head.bias)
    assert cnnviz.predict("module/custom-net", coffee)[0].label == "kind 9"
    for wrong, said in (("tests.fixtures.custom_net", "package.module:factory"),
                        ("tests.fixtures.nothing_here:factory", "cannot import"),
                        ("tests.fixtures.custom_net:missing", "has no"),
                        ("tests.fixtures.custom_net:LABELS", "not callable")):
        with pytest.raises(SystemExit, match=said):
            cli.serve_model(wrong, None, None)
