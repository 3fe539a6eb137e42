"""Registry: curated list, name resolution rules, errors with close matches, size checks, bounded cache."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import types

import pytest
import torch
import torchvision

from cnnviz import loading, pretrained, registry
from cnnviz.errors import InvalidOptionError, UnknownModelError


def test_curated_list_covers_both_libraries():
    assert len(registry.list_models(source="torchvision")) >= 12
    assert len(registry.list_models(source="timm")) >= 8
    assert registry.list_models()[0] == registry.DEFAULT_MODEL == "alexnet"
    assert registry.list_models(include="timm/*", exclude="*lite0*")[0] == "timm/resnet50.a1_in1k"
    labels = [s.label for s in registry.curated_specs()]
    assert "AlexNet · torchvision" in labels and any(text.endswith("· timm") for text in labels)


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
        loading.load_model("alexnet", weights="imagenet")


def _fake_builds(monkeypatch, capacity: int, max_bytes: int) -> list[str]:
    """Replace the builder by one that records each build and returns a small Linear per key."""
    builds: list[str] = []
    sizes = {"resnet18": 64, "vgg16": 96, "alexnet": 128, "googlenet": 32}

    def fake_build(spec, with_weights, device):
        builds.append(spec.key)
        return types.SimpleNamespace(model=torch.nn.Linear(sizes[spec.key], sizes[spec.key]),
                                     weights=pretrained.WeightsOutcome(pretrained=False, source="random initialisation"))

    monkeypatch.setattr(loading, "_build", fake_build)
    monkeypatch.setattr(loading, "_CACHE", loading._ModelCache(capacity, max_bytes))
    return builds


def _bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def test_cache_is_bounded_and_loads_once(monkeypatch):
    builds = _fake_builds(monkeypatch, capacity=2, max_bytes=2**30)
    threads = [threading.Thread(target=loading.load_model, args=("resnet18", "random")) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert builds == ["resnet18"]  # four concurrent requests, one load
    first = loading.load_model("resnet18", "random")
    loading.load_model("vgg16", "random")
    loading.load_model("alexnet", "random")  # evicts resnet18 (least recently used)
    assert loading.load_model("resnet18", "random") is not first
    assert builds == ["resnet18", "vgg16", "alexnet", "resnet18"]
    assert loading.cache_info().count == 2


def test_cache_is_bounded_by_bytes_too(monkeypatch):
    builds = _fake_builds(monkeypatch, capacity=3, max_bytes=0)
    a = loading.load_model("resnet18", "random")
    b = loading.load_model("vgg16", "random")
    budget = _bytes(a.model) + _bytes(b.model)
    monkeypatch.setattr(loading._CACHE.store, "budget", budget)  # exactly these two fit
    a = loading.load_model("resnet18", "random")  # evicted by b (alone over a 0-byte budget): rebuilt
    b = loading.load_model("vgg16", "random")  # b stays: it was the newest
    assert builds == ["resnet18", "vgg16", "resnet18"]
    info = loading.cache_info()
    assert (info.count, info.nbytes, info.capacity, info.max_bytes) == (2, budget, 3, budget)
    assert loading.load_model("resnet18", "random") is a  # now the most recently used
    loading.load_model("googlenet", "random")  # three models would fit the count, not the bytes
    assert loading.cache_info().count == 2
    assert loading.load_model("resnet18", "random") is a
    assert loading.load_model("vgg16", "random") is not b  # the least recently used one went
    assert loading.cache_info().nbytes <= budget


def test_the_newest_model_stays_even_when_alone_it_exceeds_the_budget(monkeypatch):
    builds = _fake_builds(monkeypatch, capacity=3, max_bytes=1)
    first = loading.load_model("alexnet", "random")
    assert loading.load_model("alexnet", "random") is first
    assert loading.cache_info().count == 1 and loading.cache_info().nbytes == _bytes(first.model)
    loading.load_model("vgg16", "random")
    assert loading.load_model("alexnet", "random") is not first
    assert builds == ["alexnet", "vgg16", "alexnet"]


def test_typed_models_too_large_for_a_shared_server_are_refused():
    with pytest.raises(InvalidOptionError, match=r"vit_h_14 has 632 M parameters; this app loads models up to 350 M"):
        loading.load_model("vit_h_14", "random")


def _published_params(name: str) -> int:
    return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


REGNETS = torchvision.models.list_models(module=torchvision.models, include="regnet*")


@pytest.mark.parametrize("name", [n for n in REGNETS if n != "regnet_y_128gf"])
def test_every_torchvision_regnet_passes_the_size_check(name):
    loading.check_size(registry.get_spec(name))  # RegNet builders cannot run on the meta device


def test_the_largest_regnet_gets_the_refusal_sentence():
    assert len(REGNETS) == 15
    millions = f"{_published_params('regnet_y_128gf') / 1e6:,.0f}"
    with pytest.raises(InvalidOptionError, match=rf"^regnet_y_128gf has {millions} M parameters; this app loads models up to 350 M"):
        loading.load_model("regnet_y_128gf", "random")


# Published counts describe the model built *with* those weights; two builders make another one without.
WEIGHTS_CHANGE_THE_MODEL = ("googlenet", "vit_h_14")


@pytest.mark.slow
def test_every_torchvision_model_is_counted_as_published():
    names = torchvision.models.list_models(module=torchvision.models)
    counted = {name: loading.count_parameters(registry.get_spec(f"torchvision/{name}")) for name in names}
    published = {name: _published_params(name) for name in names if name not in WEIGHTS_CHANGE_THE_MODEL}
    assert {name: counted[name] for name in published} == published
    assert len(published) == len(names) - 2 == 78


def test_counts_that_differ_from_the_published_ones_differ_by_the_weights_own_configuration():
    counted = loading.count_parameters(registry.get_spec("googlenet"))
    with torch.device("meta"):
        googlenet = torchvision.models.googlenet(weights=None)  # aux_logits=True without weights
    aux = sum(p.numel() for head in (googlenet.aux1, googlenet.aux2) for p in head.parameters())
    assert counted == _published_params("googlenet") + aux  # the weights load without the aux heads

    counted = loading.count_parameters(registry.get_spec("vit_h_14"))
    weights = torchvision.models.get_model_weights("vit_h_14").DEFAULT  # SWAG, fine-tuned at 518 px
    side = weights.meta["min_size"][0] // 14
    assert counted == _published_params("vit_h_14") - (side * side - 16 * 16) * 1280  # position embeddings at 224 px


def test_counting_leaves_other_threads_and_later_builds_alone():
    done = threading.Event()

    def count():
        for name in ("regnet_x_400mf", "regnet_y_32gf"):  # the fallback path (not buildable on meta)
            loading.count_parameters(registry.get_spec(name))
        done.set()

    worker = threading.Thread(target=count)
    worker.start()
    built = []
    while not done.is_set():
        built.append(torch.nn.Conv2d(3, 8, 3).weight)
    worker.join()
    assert built and all(w.device.type == "cpu" for w in built)
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_fallback_to_random_weights_is_retried_after_the_offline_verdict_expires(monkeypatch):

    first = loading.load_model("resnet18", "pretrained")  # offline in tests: random weights + notice
    assert first.weights.notice
    assert loading.load_model("resnet18", "pretrained") is first  # remembered for a while
    monkeypatch.setattr(pretrained, "PROBE_TTL_S", 0.0)
    assert loading.load_model("resnet18", "pretrained") is not first  # then tried again
    trained = loading.load_model("timm/tf_efficientnet_lite0", "pretrained")
    assert loading.load_model("timm/tf_efficientnet_lite0", "pretrained") is trained  # real weights stay


def test_suggestions_are_distinct_and_ignore_case():
    with pytest.raises(UnknownModelError) as e:
        registry.get_spec("ResNet5O")
    message = str(e.value)
    assert "Did you mean:" in message
    suggested = message.split("Did you mean: ", 1)[1].rstrip("?").split(", ")
    assert "resnet50" in suggested and len(suggested) == len({s.lower() for s in suggested})


def test_names_are_case_insensitive_like_the_libraries():
    assert registry.get_spec("ResNet50").key == "resnet50"
    assert registry.get_spec("TIMM/ResNet50.A1_IN1K").key == "timm/resnet50.a1_in1k"
    with pytest.raises(UnknownModelError, match="'ResNet5O'"):  # the message quotes what was typed
        registry.get_spec("ResNet5O")


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_random_weights_are_the_same_for_a_name_in_every_process():
    """A ``weights=random`` link shows its recipient the same filters: the weights come from the name alone,
    here and in a fresh interpreter, and building does not disturb the caller's own random stream."""
    loading.clear_cache()
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    here = loading.load_model("resnet18", "random").model.conv1.weight.detach().clone()
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's generator was left as it was
    loading.clear_cache()
    assert torch.equal(loading.load_model("resnet18", "random").model.conv1.weight, here)
    other = loading.load_model("resnet34", "random").model.conv1.weight
    assert not torch.equal(other, here)
    code = ("import torch, sys; from cnnviz import loading; "
            "w = loading.load_model('resnet18', 'random').model.conv1.weight; "
            "sys.stdout.write(repr(w.double().sum().item()) + ' ' + repr(w[0, 0].tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "CNNVIZ_OFFLINE": "1"}).stdout
    assert out == repr(here.double().sum().item()) + " " + repr(here[0, 0].tolist())
