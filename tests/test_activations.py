"""Captured activations equal the module outputs computed independently; hooks never leak."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from cnnviz import activations, cancel, hooks, layers
from tests.fixtures.tiny import TinyResNet


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def tiny() -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet().eval()


def _layers(model: torch.nn.Module, *names: str, size=(3, 16, 16)) -> list[layers.LayerInfo]:
    found = {layer.name: layer for layer in layers.find_layers(model, size).layers}
    return [found[name] for name in names]


def _loaded(model: torch.nn.Module) -> SimpleNamespace:
    """What capture_layers reads of a LoadedModel."""
    return SimpleNamespace(model=model, categories=None, lock=threading.RLock())


def test_capture_equals_reference_despite_inplace_relu(tiny):
    x = torch.randn(1, 3, 16, 16)
    with activations.capture(tiny, _layers(tiny, "conv1", "relu", "conv2")) as out:
        activations.run(tiny, x)
    with torch.no_grad():  # reference: the same computation written out by hand
        conv1 = torch.nn.functional.conv2d(x, tiny.conv1.weight, tiny.conv1.bias, stride=2, padding=1)
        relu1 = conv1.clamp_min(0)
        conv2 = torch.nn.functional.conv2d(relu1, tiny.conv2.weight, tiny.conv2.bias, padding=1)
    torch.testing.assert_close(out["conv1"], conv1[0])  # not overwritten by the in-place ReLU after it
    torch.testing.assert_close(out["relu"], relu1[0])  # a reused module: its first call
    torch.testing.assert_close(out["conv2"], conv2[0])
    assert _hook_count(tiny) == 0


def test_hooks_removed_and_mode_restored_on_error(tiny):
    conv1 = _layers(tiny, "conv1")
    tiny.train()
    with pytest.raises(RuntimeError):
        with activations.capture(tiny, conv1):
            activations.run(tiny, torch.randn(1, 5, 16, 16))  # wrong channel count
    assert _hook_count(tiny) == 0 and tiny.training


def test_each_modules_own_training_flag_is_restored(tiny):
    conv1 = _layers(tiny, "conv1")
    tiny.train()
    tiny.conv2.eval()  # a mixed model: frozen part in eval, the rest training
    with activations.capture(tiny, conv1):
        assert not any(m.training for m in tiny.modules())  # eval inside the block
        activations.run(tiny, torch.randn(1, 3, 16, 16))
    assert tiny.training and tiny.conv1.training and not tiny.conv2.training


def test_stop_early_skips_the_rest(tiny):
    conv1 = _layers(tiny, "conv1")
    calls = []
    tiny.fc.register_forward_hook(lambda *a: calls.append(1))
    with activations.capture(tiny, conv1, stop_early=True) as out:
        result = activations.run(tiny, torch.randn(1, 3, 16, 16))
    assert result is None and "conv1" in out and calls == []


def test_hooks_ignore_other_threads(tiny):
    other_done = threading.Event()
    with activations.capture(tiny, _layers(tiny, "conv1")) as out:
        t = threading.Thread(target=lambda: (activations.run(tiny, torch.ones(1, 3, 16, 16)), other_done.set()))
        t.start()
        t.join()
        assert other_done.is_set() and out == {}  # another request's forward is not captured here
        x = torch.randn(1, 3, 16, 16)
        activations.run(tiny, x)
    torch.testing.assert_close(out["conv1"], tiny.conv1(x)[0].detach())


def test_top_k_softmax_and_labels():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    preds = activations.top_k(logits, ["a", "b", "c"], k=2)
    assert [p.label for p in preds] == ["b", "c"]
    assert preds[0].probability == pytest.approx(torch.softmax(logits, 1)[0, 1].item())
    assert activations.top_k(logits, None) == [] and activations.top_k(logits, ["a"]) == []


def test_select_channels_modes():
    maps = torch.zeros(6, 2, 2)
    maps[4] += 5
    maps[1] += 3
    assert activations.select_channels(maps, "top", 2).tolist() == [4, 1]
    assert activations.select_channels(maps, "first", 100).tolist() == list(range(6))
    assert activations.select_channels(maps, "all").tolist() == list(range(6))
    with pytest.raises(ValueError, match="channel selection"):
        activations.select_channels(maps, "some")


def test_find_layers_forward_order_shapes_and_calls(tiny):
    found = layers.find_layers(tiny, (3, 16, 16)).layers
    assert [(info.name, info.shape, info.calls) for info in found] == [
        ("conv1", (8, 8, 8), 1),
        ("relu", (8, 8, 8), 2),
        ("conv2", (8, 8, 8), 1),
        ("pool", (8, 1, 1), 1),
    ]
    assert [info.overwritten for info in found] == [True, False, False, False]  # conv1's output is ReLU'd in place
    assert found[1].label == "relu · ReLU · 8×8×8 · called 2×, first call"
    assert _hook_count(tiny) == 0
    assert layers.first_conv_name(tiny) == "conv1"


def test_capture_layers_equals_one_layer_captures(tiny):
    x = torch.randn(1, 3, 16, 16)
    found = layers.find_layers(tiny, (3, 16, 16)).layers
    store, logits = activations.capture_layers(_loaded(tiny), found, x, with_logits=True)
    assert set(store) == {info.name for info in found}
    for layer in found:
        with activations.capture(tiny, [layer]) as one:
            activations.run(tiny, x)
        torch.testing.assert_close(store[layer.name], one[layer.name])
        assert store[layer.name].dtype == torch.float32 and store[layer.name].device.type == "cpu"
    torch.testing.assert_close(logits, tiny(x).detach())
    assert _hook_count(tiny) == 0


def test_capture_layers_stops_after_the_last_layer_without_logits(tiny):
    wanted = _layers(tiny, "conv2", "conv1")
    calls = []
    tiny.fc.register_forward_hook(lambda *a: calls.append(1))
    store, logits = activations.capture_layers(_loaded(tiny), wanted, torch.randn(1, 3, 16, 16), with_logits=False)
    assert logits is None and set(store) == {"conv1", "conv2"} and calls == []


class _HiddenInPlace(torch.nn.Module):
    """conv's output is doubled in place and freed before any other module runs: the listing cannot see it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._inner(x))

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.mul_(2)
        return y.mean(dim=(2, 3))


def test_capture_layers_never_keeps_a_map_changed_in_place_unseen():
    torch.manual_seed(0)
    model = _HiddenInPlace().eval()
    (conv,) = _layers(model, "conv", size=(3, 8, 8))
    assert not conv.overwritten  # the documented blind spot of the listing
    x = torch.randn(1, 3, 8, 8)
    store, _ = activations.capture_layers(_loaded(model), [conv], x, with_logits=True)
    with torch.no_grad():
        reference = torch.nn.functional.conv2d(x, model.conv.weight, model.conv.bias, padding=1)[0]
    torch.testing.assert_close(store["conv"], reference)  # not the doubled values


def test_capture_of_a_misspelt_module_names_close_matches(tiny):
    from cnnviz.errors import UnknownLayerError

    with pytest.raises(UnknownLayerError, match="conv1"):
        with hooks.forward_hooks(tiny, ["conv_1"], lambda *a: None):
            pass
    assert _hook_count(tiny) == 0


def test_a_stop_check_ends_the_pass_between_modules_and_leaves_no_hook(tiny, monkeypatch):
    monkeypatch.setattr(hooks, "STOP_CHECK_EVERY_S", 0.0)
    ran: list[str] = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, m in tiny.named_modules() if n]
    answers = iter([None, None, None, "gone"])  # before the pass, the model, conv1; then before relu
    x = torch.rand(1, 3, 16, 16)
    with cancel.stop_when(lambda: next(answers, "gone")):
        with pytest.raises(cancel.Stopped, match="gone"), hooks.interruptible(tiny):
            tiny(x)
    assert ran == ["conv1"]  # stopped before relu: nothing after the check fired ran
    assert all(not m._forward_pre_hooks for m in tiny.modules())
    for handle in handles:
        handle.remove()
    with hooks.interruptible(tiny):  # no check set: a plain pass
        assert tiny(x).shape == (1, 10)
