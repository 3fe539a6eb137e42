"""The user's own checkpoint: safe reading, the shapes training scripts save, fitting (and refitting the
classifier), labels, upload names, and the model cache.

Every expected value is computed here independently: weights are compared with the state dict that was
saved, outputs with a model built and loaded by torchvision itself. No network: all models are built with
random weights and saved to tmp_path.
"""
from __future__ import annotations

import argparse
import builtins
import re
import shutil
import threading

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision

import cnnviz
from cnnviz import checkpoint, loading, preprocess, registry
from cnnviz.checkpoint import PICKLED_OBJECTS
from cnnviz.errors import CheckpointError, InvalidOptionError, UnknownModelError
from cnnviz.explore import feature_maps, filter_grid, predict
from tests.fixtures.memory import peak_growth

NAME = re.compile(r"^upload/[0-9a-f]{32}$")


@pytest.fixture(autouse=True)
def fresh():
    """Every test starts and ends with no uploads and no cached models."""
    loading.clear_cache()
    loading.clear_uploads()
    yield
    loading.clear_cache()
    loading.clear_uploads()


def _distinct_state(num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A resnet18 state dict nobody else has: conv1 a known ramp, BN statistics and counters not the defaults."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(num_classes=num_classes).state_dict()
    state["conv1.weight"] = torch.arange(state["conv1.weight"].numel(), dtype=torch.float32).reshape(64, 3, 7, 7) / 1e4
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn_like(value)
        elif key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
    return state


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return _distinct_state()


def _save_safetensors(state, path):
    safetensors.torch.save_file(state, str(path))
    return path


def _reference(state, num_classes: int = 1000) -> torch.nn.Module:
    """The same weights loaded by torchvision's own strict load_state_dict."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _assert_holds(name: str, state: dict[str, torch.Tensor]) -> None:
    loaded = loading.load_model(name)
    got = loaded.model.state_dict()
    assert set(got) == set(state)
    for key, tensor in state.items():
        assert torch.equal(got[key], tensor), key
    assert not any(t.is_meta for t in (*loaded.model.parameters(), *loaded.model.buffers()))


# --------------------------------------------------------------------------------------------------
# Loading exactly the file's weights
# --------------------------------------------------------------------------------------------------


def test_a_safetensors_checkpoint_is_loaded_tensor_for_tensor(tmp_path, state, coffee):
    report = cnnviz.load_checkpoint("resnet18", _save_safetensors(state, tmp_path / "mine.safetensors"))
    assert NAME.match(report.name)
    assert (report.model, report.tensors, report.num_classes, report.labels) == ("resnet18", 122, 1000, "ImageNet")
    assert report.parameters == sum(p.numel() for p in _reference(state).parameters()) == 11_689_512
    assert report.display == "ResNet-18 · your checkpoint mine.safetensors"
    assert f"`{report.name}`" in report.describe() and "Loaded 122 tensors (11.7 M parameters)" in report.describe()

    view = filter_grid(report.name)  # the first convolution, as the Filters tab shows it
    assert torch.equal(view.filters.weight, state["conv1.weight"])
    assert view.weights.source == "your checkpoint mine.safetensors (122 tensors)" and view.weights.pretrained
    _assert_holds(report.name, state)

    loaded = loading.load_model(report.name)
    assert not loaded.model.training and loaded.spec.key == report.name
    assert loaded.categories == loading.load_model("resnet18", "random").categories  # ImageNet's, 1000 of them
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), _reference(state)(x), atol=1e-5)
    assert predict(report.name, coffee)[0].label in loaded.categories


def test_the_model_counts_in_the_model_cache(tmp_path, state):
    before = loading.cache_info()
    cnnviz.load_checkpoint("resnet18", _save_safetensors(state, tmp_path / "mine.safetensors"))
    after = loading.cache_info()
    assert after.count == before.count + 1
    assert after.nbytes - before.nbytes == sum(t.nbytes for t in state.values())


def test_a_half_precision_checkpoint_becomes_float32(tmp_path, state):
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    report = cnnviz.load_checkpoint("resnet18", _save_safetensors(half, tmp_path / "half.safetensors"))
    floats = sum(v.is_floating_point() for v in state.values())  # 102: all but the 20 BatchNorm counters
    assert report.notes == (f"converted {floats} float16 tensors to float32",)
    _assert_holds(report.name, {k: v.float() if v.is_floating_point() else v for k, v in half.items()})


def _variants(state):
    """(file name, what to save, a note the report must carry): the shapes training scripts save."""
    prefixed = {f"module.{k}": v for k, v in state.items()}
    decoy = {k: torch.zeros_like(v) for k, v in state.items()}  # the non-EMA weights, which must not win
    return [
        ("bare.pt", state, None),
        ("nested.pth", {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}, "took the weights under 'state_dict'"),
        ("model.pt", {"model": state, "arch": "resnet18"}, "took the weights under 'model'"),
        ("msd.ckpt", {"model_state_dict": state, "epoch": 9}, "took the weights under 'model_state_dict'"),
        ("ddp.bin", prefixed, "removed the 'module.' prefix from 122 keys"),
        ("compiled.pt", {f"_orig_mod.{k}": v for k, v in prefixed.items()}, "removed the '_orig_mod.' prefix from 122 keys"),
        ("timm-train.pth", {"epoch": 12, "arch": "resnet18", "state_dict": decoy, "state_dict_ema": prefixed,
                            "args": argparse.Namespace(lr=0.1, model="resnet18"), "metric": 71.2},
         "took the EMA weights under 'state_dict_ema' rather than those under 'state_dict'"),
        ("model-ema.pt", {"model": decoy, "model_ema": state}, "took the EMA weights under 'model_ema' rather than those under 'model'"),
        ("ema-keys.pt", {**decoy, **{f"model_ema.module.{k}": v for k, v in state.items()}},
         "took the EMA weights (the keys starting 'model_ema.')"),
        ("lightning.ckpt", {"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": 100},
         "removed the 'model.' prefix from 122 keys"),
    ]


@pytest.mark.parametrize("index", range(10), ids=[v[0] for v in _variants({})])
def test_the_shapes_training_scripts_save_all_load_the_same_weights(tmp_path, state, index):
    filename, content, note = _variants(state)[index]
    torch.save(content, tmp_path / filename)
    report = cnnviz.load_checkpoint("resnet18", tmp_path / filename)
    if note is not None:
        assert note in report.notes
    _assert_holds(report.name, state)


def test_format_is_told_by_content_not_suffix(tmp_path, state):
    _save_safetensors(state, tmp_path / "really-safetensors.bin")
    torch.save(state, tmp_path / "really-torch.safetensors")
    for path in (tmp_path / "really-safetensors.bin", tmp_path / "really-torch.safetensors"):
        _assert_holds(cnnviz.load_checkpoint("resnet18", path).name, state)


def test_the_legacy_torch_format_loads(tmp_path, state):
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    _assert_holds(cnnviz.load_checkpoint("resnet18", tmp_path / "old.pth").name, state)


def test_missing_batchnorm_counters_are_tolerated(tmp_path, state):
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    report = cnnviz.load_checkpoint("resnet18", _save_safetensors(old, tmp_path / "old.safetensors"))
    assert report.tensors == 102
    assert "set 20 missing BatchNorm counters (num_batches_tracked) to the model's own" in report.notes
    loaded = loading.load_model(report.name)
    for key, tensor in old.items():
        assert torch.equal(loaded.model.state_dict()[key], tensor)


# --------------------------------------------------------------------------------------------------
# Refusing what is unsafe or unreadable, with a sentence
# --------------------------------------------------------------------------------------------------


def _touch(path):
    """What an unpickled payload would run: create a file."""
    with builtins.open(path, "w") as f:
        f.write("ran")


class _Payload:
    """An object whose unpickling calls ``self.action(self.path)``."""

    def __init__(self, action, path) -> None:
        self.action, self.path = action, str(path)

    def __reduce__(self):
        return self.action, (self.path, "w") if self.action is builtins.open else (self.path,)


@pytest.mark.parametrize("action", [builtins.open, _touch], ids=["builtins.open", "module function"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, state, action):
    canary = tmp_path / "canary"
    torch.save({"state_dict": state, "payload": _Payload(action, canary)}, tmp_path / "evil.pt")
    assert not canary.exists()
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", tmp_path / "evil.pt")
    assert str(e.value).startswith(PICKLED_OBJECTS)
    assert not canary.exists()


def test_a_whole_pickled_model_is_refused_with_the_sentence(tmp_path):
    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", tmp_path / "whole.pt")
    assert str(e.value).startswith(
        "This file holds pickled Python objects (a whole model?), which this app never unpickles; "
        "save `model.state_dict()` with torch.save or safetensors instead."
    )
    assert "torchvision.models.resnet.ResNet" in str(e.value)


def test_the_size_limit_is_checked_before_reading(tmp_path, state, monkeypatch):
    path = _save_safetensors(state, tmp_path / "big.safetensors")
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 2**20)
    opened = []
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a) or pytest.fail("the file was opened"))
    with pytest.raises(CheckpointError, match=r"'big.safetensors' is 45 MB; this app reads checkpoints up to 1 MB "
                                              r"\(set CNNVIZ_MAX_CHECKPOINT_MB to change that\)\."):
        cnnviz.load_checkpoint("resnet18", path)
    assert not opened


def test_a_zip_that_would_expand_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    import zipfile

    with zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\0" * 4 * 2**20)  # compresses to a few KB
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 2**20)
    assert (tmp_path / "bomb.pt").stat().st_size < 2**20
    with pytest.raises(CheckpointError, match="is 4 MB; this app reads checkpoints up to 1 MB"):
        cnnviz.load_checkpoint("resnet18", tmp_path / "bomb.pt")


@pytest.mark.parametrize(
    ("filename", "content", "sentence"),
    [
        ("weights.h5", b"\x89HDF", "'weights.h5' is not a checkpoint this app reads: upload a .safetensors, .pt, .pth, .bin or .ckpt file"),
        ("photo.pt", b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
         "'photo.pt' is neither a safetensors nor a PyTorch checkpoint"),
        ("empty.pt", b"", "'empty.pt' is empty"),
        ("cut.safetensors", None, "could not be read as a safetensors file: it is damaged or incomplete"),
        ("cut.pt", None, "could not be read as a PyTorch file: "),
        ("tensor.pt", None, "holds a single tensor, not a state dict"),
        ("nothing.pt", None, "holds no tensors (its entries: 'epoch', 'lr')"),
    ],
)
def test_unreadable_files_get_a_sentence(tmp_path, filename, content, sentence):
    path = tmp_path / filename
    small = torchvision.models.resnet18().fc.state_dict()
    if filename == "cut.safetensors":
        content = safetensors.torch.save(small)[:-100]
    elif filename == "cut.pt":
        torch.save(small, path)
        content = path.read_bytes()[:-300]
    elif filename == "tensor.pt":
        torch.save(torch.zeros(3), path)
        content = path.read_bytes()
    elif filename == "nothing.pt":
        torch.save({"epoch": 3, "lr": 0.1}, path)
        content = path.read_bytes()
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", path)
    assert sentence in str(e.value)
    assert "Traceback" not in str(e.value)


def test_a_missing_file_gets_a_sentence(tmp_path):
    with pytest.raises(CheckpointError, match="'gone.pt' is missing or cannot be read"):
        cnnviz.load_checkpoint("resnet18", tmp_path / "gone.pt")


# --------------------------------------------------------------------------------------------------
# Checkpoints that do not fit
# --------------------------------------------------------------------------------------------------


def test_another_architectures_checkpoint_names_its_extra_keys(tmp_path):
    resnet34 = torchvision.models.resnet34().state_dict()
    resnet18 = torchvision.models.resnet18().state_dict()
    extra = [k for k in resnet34 if k not in resnet18]
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", _save_safetensors(resnet34, tmp_path / "r34.safetensors"))
    message = str(e.value)
    assert message.startswith(f"This checkpoint does not fit resnet18 (ResNet-18): {len(extra)} keys in it are not in the model (")
    named = re.findall(r"'([^']+)'", message)
    assert len(named) == 5 and set(named) <= set(extra) and message.endswith(" …). Pick the architecture it was trained with.")
    assert "missing" not in message and "shape" not in message


def test_missing_unexpected_and_mis_shaped_keys_are_named_with_counts(tmp_path, state):
    broken = dict(state)
    broken["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    del broken["fc.bias"]
    broken["extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", _save_safetensors(broken, tmp_path / "broken.safetensors"))
    message = str(e.value)
    assert "1 key of the model is missing from it ('fc.bias')" in message
    assert "1 key in it is not in the model ('extra.weight')" in message
    assert "1 tensor has another shape ('layer1.0.conv1.weight': checkpoint 32×64×3×3, model 64×64×3×3)" in message


def test_only_the_first_five_keys_of_a_kind_are_named(tmp_path, state):
    partial = {k: v for k, v in state.items() if not k.startswith("layer4")}
    missing = [k for k in state if k.startswith("layer4") and not k.endswith("num_batches_tracked")]  # counters are tolerated
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", _save_safetensors(partial, tmp_path / "partial.safetensors"))
    assert f"{len(missing)} keys of the model are missing from it ('{missing[0]}'" in str(e.value)
    assert missing[4] in str(e.value) and missing[5] not in str(e.value)


def test_long_keys_are_cut_in_messages(tmp_path, state):
    odd = {**state, "x" * 500: torch.zeros(1)}
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", _save_safetensors(odd, tmp_path / "odd.safetensors"))
    assert "x" * 100 not in str(e.value) and "x" * 70 + "…" in str(e.value)


# --------------------------------------------------------------------------------------------------
# Another number of classes, labels
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ten() -> dict[str, torch.Tensor]:
    return _distinct_state(num_classes=10, seed=1)


def test_a_ten_class_checkpoint_rebuilds_the_classifier_and_its_views_work(tmp_path, ten, coffee):
    report = cnnviz.load_checkpoint("resnet18", _save_safetensors(ten, tmp_path / "ten.safetensors"))
    assert (report.num_classes, report.labels) == (10, None)
    assert "its classifier has 10 classes, not 1000, so resnet18 was built with 10" in report.notes
    assert "predictions are hidden" in report.describe()
    _assert_holds(report.name, ten)
    loaded = loading.load_model(report.name)
    assert loaded.categories is None and predict(report.name, coffee) == []

    reference = _reference(ten, 10)
    x = preprocess.to_input(loaded, cnnviz.open_image(coffee))
    seen = {}
    reference.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=o[0]))
    with torch.no_grad():
        reference(x)
    view = feature_maps(report.name, coffee, layer="layer1")
    assert torch.allclose(view.maps, seen["layer1"], atol=1e-5)
    assert torch.equal(filter_grid(report.name, layer="layer1.0.conv1").filters.weight, ten["layer1.0.conv1.weight"])


def test_labels_name_the_predictions(tmp_path, ten, coffee):
    names = [f"kind {i}" for i in range(10)]
    (tmp_path / "labels.txt").write_text("\ufeff" + "\n".join(f"  {n} " for n in names) + "\n\n\n", encoding="utf-8")
    report = cnnviz.load_checkpoint("resnet18", _save_safetensors(ten, tmp_path / "ten.safetensors"), labels=tmp_path / "labels.txt")
    assert report.labels == "yours" and "labelled from your file" in report.describe()
    loaded = loading.load_model(report.name)
    assert loaded.categories == tuple(names)
    with torch.no_grad():
        probs = torch.softmax(_reference(ten, 10)(preprocess.to_input(loaded, cnnviz.open_image(coffee)))[0], 0)
    expected = [names[i] for i in probs.topk(5).indices.tolist()]
    assert [p.label for p in predict(report.name, coffee)] == expected


def test_labels_of_the_wrong_length_get_a_sentence(tmp_path, ten):
    (tmp_path / "labels.txt").write_text("\n".join(f"kind {i}" for i in range(9)), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"^The labels file has 9 lines but the checkpoint has 10 classes: "
                                              "give one label per class, in class order.$"):
        cnnviz.load_checkpoint("resnet18", _save_safetensors(ten, tmp_path / "ten.safetensors"), labels=tmp_path / "labels.txt")


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        (b"a\n\nb\n", "Line 2 of the labels file is blank"),
        (b"\xff\xfe\x00a", "is not UTF-8 text"),
        (b"\n\n", "The labels file is empty"),
        (b"x" * (2**20 + 1), "is 1,048,577 bytes; labels files may have up to 1,048,576 bytes (one class name per line)."),
    ],
)
def test_malformed_labels_files_get_a_sentence(tmp_path, content, sentence):
    (tmp_path / "labels.txt").write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(sentence)):
        checkpoint.read_labels(tmp_path / "labels.txt")


def test_a_timm_architecture_with_other_classes(tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("resnet10t", num_classes=5)
    state = model.state_dict()
    report = cnnviz.load_checkpoint("timm/resnet10t", _save_safetensors(state, tmp_path / "t.safetensors"), labels=list("abcde"))
    assert (report.model, report.num_classes, report.labels) == ("timm/resnet10t", 5, "yours")
    loaded = loading.load_model(report.name)
    _assert_holds(report.name, state)
    x = torch.randn(1, *loaded.input_size)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model.eval()(x), atol=1e-5)


def test_non_persistent_buffers_are_the_architectures_own(tmp_path):
    """resnetblur18's blur filters are buffers left out of the state dict: built, not loaded, never on meta."""
    torch.manual_seed(4)
    model = timm.create_model("resnetblur18").eval()
    report = cnnviz.load_checkpoint("timm/resnetblur18", _save_safetensors(model.state_dict(), tmp_path / "blur.safetensors"))
    loaded = loading.load_model(report.name)
    buffers = dict(loaded.model.named_buffers())
    assert "maxpool.1.filt" not in loaded.model.state_dict()
    assert torch.equal(buffers["maxpool.1.filt"], dict(model.named_buffers())["maxpool.1.filt"])
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-5)


def test_loading_leaves_initialisation_alone(tmp_path, state):
    """Loading builds the architecture without initialising it; afterwards models are initialised again."""
    originals = {name: getattr(torch.nn.init, name) for name in ("kaiming_normal_", "uniform_", "trunc_normal_")}
    cnnviz.load_checkpoint("resnet18", _save_safetensors(state, tmp_path / "a.safetensors"))
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals
    random = loading.load_model("resnet18", "random").model
    with torch.no_grad():
        assert 0.01 < float(random.conv1.weight.std()) < 1 and float(random.layer1[0].conv1.weight.std()) > 0.01


@pytest.mark.parametrize("aux", [False, True], ids=["saved without aux heads", "trained with aux heads"])
def test_googlenet_checkpoints_with_or_without_auxiliary_heads(tmp_path, aux):
    torch.manual_seed(3)
    model = torchvision.models.googlenet(weights=None, aux_logits=aux, init_weights=True)
    report = cnnviz.load_checkpoint("googlenet", _save_safetensors(model.state_dict(), tmp_path / "g.safetensors"))
    loaded = loading.load_model(report.name)
    assert loaded.model.aux1 is None  # dropped after loading, as torchvision does
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key]), key


# --------------------------------------------------------------------------------------------------
# Names, forgetting, random weights
# --------------------------------------------------------------------------------------------------


def test_names_follow_the_file_and_the_architecture(tmp_path, state):
    path = _save_safetensors(state, tmp_path / "a.safetensors")
    first = cnnviz.load_checkpoint("resnet18", path).name
    assert cnnviz.load_checkpoint("ResNet18", path).name == first
    shutil.copy(path, tmp_path / "copy.safetensors")
    assert cnnviz.load_checkpoint("resnet18", tmp_path / "copy.safetensors").name == first
    changed = {**state, "fc.bias": state["fc.bias"] + 1}
    assert cnnviz.load_checkpoint("resnet18", _save_safetensors(changed, tmp_path / "b.safetensors")).name != first
    assert cnnviz.load_checkpoint("timm/resnet18", path).name != first  # same keys, another architecture
    assert cnnviz.load_checkpoint(first, path).model == "resnet18"  # an upload name stands for its architecture


def test_uploads_are_never_listed_nor_suggested(tmp_path, state):
    name = cnnviz.load_checkpoint("resnet18", _save_safetensors(state, tmp_path / "a.safetensors")).name
    assert name not in registry.list_models() and all(s.key != name for s in registry.curated_specs())
    near = name[:-1] + ("0" if name[-1] != "0" else "1")
    for guess in (near, "upload/", "upload", "upload/../../etc/passwd", "uploads/" + name[len("upload/"):]):
        with pytest.raises(UnknownModelError) as e:
            registry.get_spec(guess)
        assert name not in str(e.value) and name[len("upload/"):-1] not in str(e.value).replace(guess, "")


def test_an_unknown_upload_name_gets_the_sentence():
    with pytest.raises(UnknownModelError) as e:
        cnnviz.load_model("upload/" + "ab" * 16)
    assert str(e.value) == (
        f"No uploaded checkpoint is called 'upload/{'ab' * 16}' on this server now: uploads are kept only "
        "while the server holds them. Upload the file again."
    )


def test_an_evicted_upload_is_rebuilt_from_its_file_until_the_file_goes(tmp_path, state):
    path = _save_safetensors(state, tmp_path / "a.safetensors")
    name = cnnviz.load_checkpoint("resnet18", path).name
    loading.clear_cache()
    _assert_holds(name, state)  # rebuilt from the file
    loading.clear_cache()
    path.unlink()
    with pytest.raises(UnknownModelError, match="Upload the file again"):
        loading.load_model(name)


def test_another_file_at_the_recorded_path_is_not_taken_for_the_upload(tmp_path, state):
    path = _save_safetensors(state, tmp_path / "a.safetensors")
    name = cnnviz.load_checkpoint("resnet18", path).name
    loading.clear_cache()
    _save_safetensors({**state, "fc.bias": state["fc.bias"] * 0}, path)
    with pytest.raises(UnknownModelError, match="Upload the file again"):
        loading.load_model(name)


def test_forgotten_names_are_refused(tmp_path, state):
    name = cnnviz.load_checkpoint("resnet18", _save_safetensors(state, tmp_path / "a.safetensors")).name
    loading.clear_uploads()
    with pytest.raises(UnknownModelError, match="Upload the file again"):
        loading.load_model(name)


def test_random_weights_for_an_upload_keep_its_classes_and_labels(tmp_path, ten):
    report = cnnviz.load_checkpoint("resnet18", _save_safetensors(ten, tmp_path / "ten.safetensors"), labels=[str(i) for i in range(10)])
    random = loading.load_model(report.name, "random")
    assert not random.weights.pretrained and random.weights.source == "random initialisation"
    assert random.model.fc.out_features == 10 and random.categories == tuple(str(i) for i in range(10))
    assert random.spec.key == report.name
    assert not torch.equal(random.model.conv1.weight, ten["conv1.weight"])
    assert filter_grid(report.name, "random").weights.pretrained is False


def test_two_uploads_of_the_same_file_at_once_build_one_model(tmp_path, state, monkeypatch):
    path = _save_safetensors(state, tmp_path / "a.safetensors")
    builds = []
    original = checkpoint.read_state_dict
    monkeypatch.setattr(checkpoint, "read_state_dict", lambda *a: builds.append(1) or original(*a))
    barrier = threading.Barrier(2)
    names = []

    def upload():
        barrier.wait()
        names.append(cnnviz.load_checkpoint("resnet18", path).name)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 2 and names[0] == names[1] and len(builds) == 1


# --------------------------------------------------------------------------------------------------
# Files that claim more than they hold: refused before anything is materialised
# --------------------------------------------------------------------------------------------------
# The budget (the issue's): a hostile file never makes the process's resident memory grow by more than ten
# times its own size, plus a little for the reading itself, before it is refused. The peak is measured.

SLACK = 16 * 2**20  # the reader's own working memory (zip index, pickle buffers, Python objects)


@pytest.fixture(scope="module")
def warm(tmp_path_factory, state):
    """One ordinary upload first, so the measured refusals do not count imports and first builds."""
    path = _save_safetensors(state, tmp_path_factory.mktemp("warm") / "warm.safetensors")
    cnnviz.load_checkpoint("resnet18", path)
    loading.clear_cache()
    loading.clear_uploads()


def _refused(path, model: str = "resnet18", error=CheckpointError) -> str:
    """The sentence ``load_checkpoint`` refuses ``path`` with, after checking that refusing it kept within the
    memory budget and cached nothing."""
    raised, growth = peak_growth(lambda: cnnviz.load_checkpoint(model, path))
    size = path.stat().st_size
    assert isinstance(raised, error), f"not refused with {error.__name__}: {raised!r}"
    assert growth < 10 * size + SLACK, f"{growth / 2**20:.0f} MB grew refusing a {size / 1e3:.0f} KB file"
    assert loading.cache_info().count == 0
    message = str(raised)
    assert "alloc_cpu" not in message and "Traceback" not in message
    return message


def _expanded(state) -> dict[str, torch.Tensor]:
    """Every tensor of ``state`` (shapes and dtypes: meta tensors will do) as a view of one zero, stride 0:
    the file holds 4 bytes of data however large the shapes."""
    zeros: dict[torch.dtype, torch.Tensor] = {}
    return {k: zeros.setdefault(v.dtype, torch.zeros((), dtype=v.dtype)).expand(v.shape) for k, v in state.items()}


def _shapes(build) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build().state_dict()


def _with_classes(n: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """resnet18's state dict as stride-0 views, with a classifier of ``n`` classes."""
    state = _expanded(_shapes(torchvision.models.resnet18))
    state["fc.weight"] = torch.zeros((), dtype=dtype).expand(n, 512)
    state["fc.bias"] = torch.zeros(()).expand(n)
    return state


def test_a_tiny_file_of_expanded_tensors_claiming_1_5_million_classes_is_refused(tmp_path, warm):
    """The issue's 38 KB file: fc of 1.5 M classes saved with expand(); it built 780 M parameters (+2.85 GB)."""
    torch.save(_with_classes(1_500_000), tmp_path / "classes.pt")
    assert (tmp_path / "classes.pt").stat().st_size < 100_000
    message = _refused(tmp_path / "classes.pt")
    assert re.match(r"The checkpoint 'classes.pt' is \d+ KB, but its tensors take 2,978 MB at full size: "
                    r"102 tensors \('conv1.weight', ", message)
    assert "are views that repeat their values (saved from expand() or overlapping slices)" in message
    assert "This app reads checkpoints whose tensors take up to 400 MB." in message


def test_a_tiny_file_claiming_vit_h_14_is_refused_like_the_typed_name(tmp_path, warm, monkeypatch):
    """The issue's 130 KB file that loaded vit_h_14 (633 M parameters), which is refused when typed."""
    torch.save(_expanded(_shapes(torchvision.models.vit_h_14)), tmp_path / "vit.pt")
    assert (tmp_path / "vit.pt").stat().st_size < 200_000
    read = []
    monkeypatch.setattr(checkpoint, "read_state_dict", lambda *a: read.append(a) or pytest.fail("the file was read"))
    message = _refused(tmp_path / "vit.pt", "vit_h_14", error=InvalidOptionError)
    with pytest.raises(InvalidOptionError) as typed:
        loading.load_model("vit_h_14", "random")
    assert message == str(typed.value) == (
        "vit_h_14 has 632 M parameters; this app loads models up to 350 M (set CNNVIZ_MAX_PARAMS to change that).")
    assert not read


def _million_empty_tensors(path, count: int = 1_000_000) -> None:
    """A safetensors file listing ``count`` empty tensors (the issue's 67 MB file), its header written by hand."""
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(count))
    header = ("{" + entries + "}").encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def test_a_million_empty_tensors_are_refused_from_the_header(tmp_path, warm, monkeypatch):
    """The issue's file held a worker 67-229 s and kept 1.2-1.6 GB: now only the header's start is read."""
    _million_empty_tensors(tmp_path / "million.safetensors")
    built = []
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: built.append(a) or pytest.fail("tensors built"))
    message = _refused(tmp_path / "million.safetensors")
    assert message == (
        "The checkpoint 'million.safetensors' holds more than 20,000 tensors; this app reads checkpoints of up to "
        "20,000 (a model's state dict has a few hundred to a few thousand). Save `model.state_dict()` with "
        "torch.save or safetensors and upload that file."
    )
    assert not built


def _many(kind: str, path) -> None:
    """PyTorch files of more tensors than the limit, each one way."""
    one = torch.zeros(0)
    if kind == "shared":  # 25,000 names for one tensor: a small pickle, too many tensors
        torch.save({f"t{i}": one for i in range(25_000)}, path)
    elif kind == "storages":  # one archive entry per storage
        torch.save({f"t{i}": torch.zeros(1) for i in range(20_100)}, path)
    else:  # 300,000 names: a pickle too large to unpickle in time, in the zip or the legacy format
        torch.save({f"t{i}": one for i in range(300_000)}, path, _use_new_zipfile_serialization=kind == "pickle")


@pytest.mark.parametrize(
    ("kind", "sentence"),
    [
        ("shared", "holds 25,000 tensors; this app reads checkpoints of up to 20,000"),
        ("storages", "holds more than 20,000 tensors; this app reads checkpoints of up to 20,000"),
        ("pickle", "lists its tensors in 5.3 MB of pickle data; this app reads up to 2 MB, room for 20,000 tensors"),
        ("legacy", "lists its tensors in more than 2 MB of pickle data; this app reads up to 2 MB, room for 20,000"),
    ],
)
def test_torch_files_of_too_many_tensors_are_refused_before_they_are_built(tmp_path, warm, kind, sentence):
    _many(kind, tmp_path / "many.pt")
    assert sentence in _refused(tmp_path / "many.pt")


def test_a_classifier_of_more_than_100_000_classes_is_refused_before_it_is_built(tmp_path, warm):
    torch.save(_with_classes(150_000, torch.int8), tmp_path / "wide.pt")  # 124 MB at full size: under that limit
    assert _refused(tmp_path / "wide.pt") == (
        "This checkpoint's classifier has 150,000 classes; this app builds classifiers of up to 100,000 "
        "(ImageNet-21k, the largest label set in use, has 21,843)."
    )


def test_the_parameter_cap_applies_to_the_model_a_checkpoint_builds(tmp_path, warm, monkeypatch):
    """resnet18 (11.7 M) is under any cap; with the file's 100,000 classes it has 62.5 M parameters."""
    monkeypatch.setattr(loading, "MAX_PARAMS", 50_000_000)
    torch.save(_with_classes(100_000, torch.int8), tmp_path / "wide.pt")
    assert _refused(tmp_path / "wide.pt") == (
        "This checkpoint builds resnet18 with 100,000 classes, which has 62 M parameters; this app loads models "
        "up to 50 M (set CNNVIZ_MAX_PARAMS to change that)."
    )


def test_a_file_claiming_four_terabytes_gets_a_sentence_not_the_allocators_message(tmp_path, warm):
    torch.save(_with_classes(2**31), tmp_path / "huge.pt")  # 2^31 classes × 512 × 4 bytes: 4 TB at full size
    message = _refused(tmp_path / "huge.pt")
    assert "its tensors take 4,104 GB at full size" in message and "DefaultCPUAllocator" not in message


def test_running_out_of_memory_is_a_sentence():
    with pytest.raises(CheckpointError) as e, checkpoint.allocation_errors("big.pt"):
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: no machine gives it
    assert str(e.value) == (
        "The server does not have enough free memory to load the checkpoint 'big.pt' now (one allocation of "
        "1,048,576 GB failed). Try again later, or load a smaller model."
    )
    with pytest.raises(KeyError), checkpoint.allocation_errors("big.pt"):  # anything else goes through untouched
        raise KeyError("x")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_checkpoint_holding_nan_or_infinity_is_refused_naming_its_tensors(tmp_path, state, value):
    broken = {k: v.clone() for k, v in state.items()}
    broken["conv1.weight"][3, 1, 2, 2] = value
    broken["fc.bias"][:] = value
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", _save_safetensors(broken, tmp_path / "diverged.safetensors"))
    assert str(e.value) == (
        "The checkpoint 'diverged.safetensors' holds NaN or infinite values in 2 tensors ('conv1.weight', "
        "'fc.bias'): the training run that saved it had diverged, and a model with them computes nothing but "
        "NaN. Upload a checkpoint saved before that."
    )
    assert loading.cache_info().count == 0


def test_huge_finite_weights_load_and_their_filters_are_drawn(tmp_path, state):
    """Weights of ±3e38 are finite (loaded), though x - min overflows float32: the Filters view still draws
    them, with a histogram and norms of every weight."""
    huge = {k: v.clone() for k, v in state.items()}
    huge["conv1.weight"][0] = 3e38
    huge["conv1.weight"][1] = -3e38
    huge["layer1.0.conv1.weight"][5] = -3e38
    huge["layer1.0.conv2.weight"][:] = -3e38  # one value throughout: numpy's float32 bins cannot span it
    report = cnnviz.load_checkpoint("resnet18", _save_safetensors(huge, tmp_path / "huge.safetensors"))
    for layer, count in (("conv1", 64 * 3 * 7 * 7), ("layer1.0.conv1", 64 * 64 * 3 * 3), ("layer1.0.conv2", 64 * 64 * 3 * 3)):
        view = filter_grid(report.name, layer=layer)
        assert view.image.dtype == np.uint8 and view.image.ndim == 3
        assert view.histogram.counts.sum() == count and np.isfinite(view.histogram.edges).all()
        assert np.isfinite(view.norms.norms).all() and view.norms.flagged.size == 0
    conv1 = filter_grid(report.name, layer="conv1", normalise="filter")
    assert conv1.image.std() > 0


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_archive_is_named_for_what_it_is(tmp_path, how):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    compiled = torch.jit.script(module) if how == "script" else torch.jit.trace(module, torch.zeros(1, 3, 8, 8))
    torch.jit.save(compiled, tmp_path / "program.pt")
    with pytest.raises(CheckpointError) as e:
        cnnviz.load_checkpoint("resnet18", tmp_path / "program.pt")
    assert str(e.value) == (
        "'program.pt' is a TorchScript archive (saved with torch.jit.save): a compiled program, which this app "
        "does not run. Upload the model's weights instead: torch.save(model.state_dict(), 'model.pt') or "
        "safetensors' save_file (from this file: torch.jit.load(path).state_dict())."
    )
