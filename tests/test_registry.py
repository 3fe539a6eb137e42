"""Registry: curated list, name resolution rules, errors with close matches, bounded cache."""
from __future__ import annotations

import threading

import pytest

from cnnviz import registry
from cnnviz.errors import InvalidOptionError, UnknownModelError


def test_curated_list_covers_both_libraries():
    assert len(registry.list_models(source="torchvision")) >= 12
    assert len(registry.list_models(source="timm")) >= 8
    assert registry.list_models()[0] == registry.DEFAULT_MODEL == "alexnet"
    assert registry.list_models(include="timm/*", exclude="*lite0*")[0] == "timm/resnet50.a1_in1k"
    labels = [s.label for s in registry.curated_specs()]
    assert "AlexNet · torchvision" in labels and any(l.endswith("· timm") for l in labels)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model(registry.get_spec("alexnet"))


@pytest.mark.parametrize(
    ("name", "source", "arch"),
    [
        ("resnet50", "torchvision", "resnet50"),  # bare name in both libraries: torchvision's
        ("torchvision/resnet50", "torchvision", "resnet50"),
        ("timm/resnet50", "timm", "resnet50"),
        ("timm/resnet50.a1_in1k", "timm", "resnet50.a1_in1k"),
        ("resnet34", "torchvision", "resnet34"),  # not curated, still valid
        ("mobilenetv4_conv_small", "timm", "mobilenetv4_conv_small"),  # bare, only in timm
        ("  alexnet ", "torchvision", "alexnet"),
    ],
)
def test_name_resolution(name, source, arch):
    spec = registry.get_spec(name)
    assert (spec.source, spec.arch) == (source, arch)


@pytest.mark.parametrize(
    "name",
    ["resnet5O", "../../etc/passwd", "timm/resnet50.no_such_tag", "hf-hub:timm/resnet50", "__import__('os')", "", "torchvision/mobilenetv4_conv_small"],
)
def test_unknown_or_unsafe_names_are_refused(name):
    with pytest.raises(UnknownModelError) as e:
        registry.get_spec(name)
    assert "model" in str(e.value).lower()


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="resnet50"):
        registry.get_spec("resnet5O")


def test_load_validates_weights_choice():
    with pytest.raises(InvalidOptionError, match="pretrained"):
        registry.load_model("alexnet", weights="imagenet")


def test_cache_is_bounded_and_loads_once(monkeypatch):
    builds = []

    def fake_build(spec, pretrained, device):
        builds.append(spec.key)
        return object()

    monkeypatch.setattr(registry, "_build", fake_build)
    monkeypatch.setattr(registry, "_CACHE", registry._ModelCache(2))
    threads = [threading.Thread(target=registry.load_model, args=("resnet18", "random")) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert builds == ["resnet18"]  # four concurrent requests, one load
    first = registry.load_model("resnet18", "random")
    registry.load_model("vgg16", "random")
    registry.load_model("alexnet", "random")  # evicts resnet18 (least recently used)
    assert registry.load_model("resnet18", "random") is not first
    assert builds == ["resnet18", "vgg16", "alexnet", "resnet18"]


def test_typed_models_too_large_for_a_shared_server_are_refused():
    with pytest.raises(InvalidOptionError, match=r"vit_h_14 has 632 M parameters; this app loads models up to 300 M"):
        registry.load_model("vit_h_14", "random")


def test_fallback_to_random_weights_is_retried_after_the_offline_verdict_expires(monkeypatch):
    from cnnviz import weights

    first = registry.load_model("resnet18", "pretrained")  # offline in tests: random weights + notice
    assert first.weights.notice
    assert registry.load_model("resnet18", "pretrained") is first  # remembered for a while
    monkeypatch.setattr(weights, "PROBE_TTL_S", 0.0)
    assert registry.load_model("resnet18", "pretrained") is not first  # then tried again
    trained = registry.load_model("timm/tf_efficientnet_lite0", "pretrained")
    assert registry.load_model("timm/tf_efficientnet_lite0", "pretrained") is trained  # real weights stay
