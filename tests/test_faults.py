"""Faults: a download cut halfway leaves no corrupt file and a later retry works; a model that
cannot run gives a sentence and leaves other models working."""
from __future__ import annotations

import io
import re
from email.message import Message

import gradio as gr
import pytest
import torch
import torchvision

from cnnviz import loading, pretrained, ui


class _FakeResponse:
    """What urlopen returns: headers with Content-Length, then the body, optionally cut halfway."""

    def __init__(self, body: bytes, cut: bool) -> None:
        self.stream, self.cut, self.size = io.BytesIO(body), cut, len(body)
        self.headers = Message()
        self.headers["Content-Length"] = str(len(body))

    def info(self):
        return self.headers

    def read(self, n: int) -> bytes:
        if self.cut and self.stream.tell() >= self.size // 2:
            raise ConnectionResetError("connection reset by peer")
        return self.stream.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def online_hub(tmp_path, monkeypatch):
    """A torch hub cache in tmp_path and a 'network' that serves one resnet18 file, cut or whole."""
    monkeypatch.delenv("CNNVIZ_OFFLINE", raising=False)
    monkeypatch.setattr(pretrained, "_offline_reason", lambda host: None)
    monkeypatch.setattr(torch.hub, "HASH_REGEX", re.compile(r"(?!x)x"))  # our file cannot match the real hash
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # torch.hub.get_dir() -> tmp_path
    saved = torchvision.models.resnet18().state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    state = {"cut": True, "calls": 0}

    def fake_urlopen(request, *args, **kwargs):
        state["calls"] += 1
        return _FakeResponse(buffer.getvalue(), state["cut"])

    monkeypatch.setattr(torch.hub, "urlopen", fake_urlopen)
    yield tmp_path / "checkpoints", saved, state
    pretrained.clear_network_cache()


def test_cut_download_leaves_no_file_and_retry_works(online_hub):
    checkpoints, saved, state = online_hub
    model, _, outcome = pretrained.load_torchvision("resnet18", pretrained=True)
    assert state["calls"] == 1 and not outcome.pretrained
    assert "resnet18" in outcome.notice and "random weights" in outcome.notice
    assert list(checkpoints.iterdir()) == []  # no partial or corrupt file in the cache

    state["cut"] = False  # the network is back
    pretrained.clear_network_cache()
    model, _, outcome = pretrained.load_torchvision("resnet18", pretrained=True)
    assert outcome.pretrained and state["calls"] == 2
    assert [p.name for p in checkpoints.iterdir()] == ["resnet18-f37072fd.pth"]
    torch.testing.assert_close(model.state_dict()["conv1.weight"], saved["conv1.weight"])


class _Unrunnable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        raise RuntimeError("this model cannot run")


def test_model_that_cannot_run_gives_a_sentence_and_others_still_work(monkeypatch, coffee):
    real_build = loading._build

    def build(spec, pretrained, device):
        loaded = real_build(spec, pretrained, device)
        if spec.key == "squeezenet1_1":
            return loading.LoadedModel(spec, _Unrunnable().eval(), loaded.transform, loaded.input_size,
                                        loaded.categories, loaded.weights, device)
        return loaded

    monkeypatch.setattr(loading, "_build", build)
    loading.clear_cache()
    with pytest.raises(gr.Error, match=r"Feature maps failed on this model and input \(RuntimeError\); the server logged the details\."):
        ui.feature_maps("squeezenet1_1", str(coffee), "", "random")
    image, labels, caption = ui.feature_maps("resnet18", str(coffee), "layer1", "random")
    assert caption.startswith("`layer1`") and len(labels) == 5
    loading.clear_cache()
