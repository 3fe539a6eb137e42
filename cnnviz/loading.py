"""Loading models: :class:`LoadedModel` (what every view works on), building from a registry spec with the
weights asked for, the size check, the bounded model cache, and the user's checkpoints (``"upload/<32 hex>"``).

A name is resolved by :func:`get_spec`: an upload name here, every other name by :func:`cnnviz.registry.get_spec`.
Upload names are never listed and never suggested.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from PIL import Image

from . import cache, checkpoint, pretrained, registry, vocab
from .errors import CheckpointError, InvalidOptionError, UnknownModelError, quoted
from .pretrained import WeightsOutcome
from .registry import ModelSpec, is_curated

WEIGHT_CHOICES = vocab.values(vocab.Weights)


def get_spec(name: str | LoadedModel) -> ModelSpec:
    """Resolve a model name to a spec: an upload or a module this process holds, else
    :func:`cnnviz.registry.get_spec`. A :class:`LoadedModel` (:func:`from_module`'s handle) stands for its name.

    >>> get_spec("ResNet50").key
    'resnet50'

    Raises:
        UnknownModelError: not a model name, or an upload name this server no longer holds.
    """
    if isinstance(name, LoadedModel):  # a handle (from_module's, or any loaded model) stands for its name
        name = name.spec.key
    if isinstance(name, str) and name.strip().lower().startswith(MODULE_PREFIX):
        return _module_record(name.strip().lower()).own.spec
    if isinstance(name, str) and name.strip().lower().startswith(checkpoint.UPLOAD_PREFIX):
        lowered = name.strip().lower()
        try:
            return _UPLOADS.get(lowered).spec
        except UnknownModelError:
            raise _forgotten(name.strip()) from None
    return registry.get_spec(name)


T = TypeVar("T")

@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for inference, with its own preprocessing and labels.

    ``model`` is in eval mode on ``device``. Treat it as read-only: it is shared by every request.
    Hold ``lock`` around anything that runs it with hooks attached (captures, summaries), so one
    request's hooks never see another request's forward pass.

    Everything computed from the model once and kept (its layer listing, receptive fields, summaries,
    filters, recent inputs and predictions) lives here, in :meth:`memo`, and goes when the model
    cache drops the model: one owner for every per-model cache. (Kept activation maps, which are
    large and shared across models, have their own byte budget: ``explore.KEPT``.)
    """

    spec: ModelSpec
    model: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]  # PIL RGB -> Tensor[3,H,W] float32
    input_size: tuple[int, int, int]
    categories: tuple[str, ...] | None
    weights: WeightsOutcome
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    derived: dict = field(default_factory=dict, repr=False)  # key -> what memo() computed

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """The value for ``key`` computed from this model: ``compute()`` on first use, then kept as long
        as the model is loaded. Two first uses at once may both compute; the first result is kept.

        >>> loaded = load_model("resnet18", "random")
        >>> loaded.memo("answer", lambda: 42), loaded.memo("answer", lambda: 0)
        (42, 42)
        """
        with _DERIVED_LOCK:
            if key in self.derived:
                return self.derived[key]
        value = compute()
        with _DERIVED_LOCK:
            return self.derived.setdefault(key, value)


_DERIVED_LOCK = threading.Lock()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``"auto"`` (default, or ``$CNNVIZ_DEVICE``) picks CUDA when available, else CPU."""
    choice = str(device or os.environ.get("CNNVIZ_DEVICE", "auto"))
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidOptionError("CUDA was requested but no CUDA device is available; use 'cpu' or 'auto'.")
    if choice.split(":")[0] not in ("cpu", "cuda"):
        raise InvalidOptionError(f"Unknown device {choice!r}; use 'auto', 'cpu' or 'cuda'.")
    return torch.device(choice)


_SEED_LOCK = threading.Lock()  # torch's generator is one per process: seeded builds take turns


def seed_of(key: str) -> int:
    """The seed of a model's random weights: from its name alone, so the same name gives the same random
    weights in every process (a ``weights=random`` link shows its recipient the same filters).

    >>> seed_of("resnet18") == seed_of("resnet18") != seed_of("resnet34")
    True
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


@contextlib.contextmanager
def seeded(key: str) -> Iterator[None]:
    """Within the block, torch's CPU generator is seeded with :func:`seed_of` ``(key)``; its state before is
    restored after, and no other seeded build runs meanwhile."""
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(key))
        yield


def _build(spec: ModelSpec, with_weights: bool, device: torch.device) -> LoadedModel:
    with seeded(spec.key):  # random weights (asked for, or a fallback) are the name's own
        return _built(spec, with_weights, device)


def _built(spec: ModelSpec, with_weights: bool, device: torch.device) -> LoadedModel:
    if spec.source == "torchvision":
        model, weights_enum, outcome = pretrained.load_torchvision(spec.arch, with_weights)
        transform, input_size = pretrained.torchvision_transform(weights_enum)
        categories = pretrained.torchvision_categories(weights_enum)
    else:
        model, outcome = pretrained.load_timm(spec.arch, with_weights)
        transform, input_size = pretrained.timm_transform(model)
        categories = pretrained.timm_categories(model)
    model = model.eval().to(device)
    return LoadedModel(spec, model, transform, input_size, categories, outcome, device)


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers, each storage counted once (tied weights too).

    >>> model_nbytes(torch.nn.Linear(10, 4))  # (40 + 4) float32
    176
    """
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in itertools.chain(model.parameters(), model.buffers())
    }
    return sum(storages.values())


@dataclass(frozen=True)
class CacheInfo:
    """What the model cache holds now, and its two bounds."""

    count: int  # models held
    nbytes: int  # their parameter + buffer bytes
    capacity: int  # at most this many models ($CNNVIZ_MODEL_CACHE)
    max_bytes: int  # and at most this many bytes ($CNNVIZ_MODEL_CACHE_MB), unless one model alone is larger


class _ModelCache:
    """Loaded models in a :class:`cnnviz.cache.Store` bounded by bytes and by count, with one lock per key, so
    concurrent requests load a model once.

    The least recently used models go until both bounds hold; the model just inserted always stays, even when
    alone it exceeds ``max_bytes``. A model that fell back to random weights is rebuilt once the offline
    verdict has expired, so a machine that comes back online gets its pretrained weights without a restart."""

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.store: cache.Store[tuple[LoadedModel, float]] = cache.Store("models", max_bytes, max_items=max(1, capacity))
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def _fresh(self, key: tuple) -> LoadedModel | None:
        item = self.store.get(key)
        if item is None:
            return None
        loaded, built = item
        if loaded.weights.notice and time.monotonic() - built > pretrained.PROBE_TTL_S:
            self.store.pop(key)
            return None
        return loaded

    def get(self, key: tuple, build: Callable[[], LoadedModel]) -> LoadedModel:
        if (loaded := self._fresh(key)) is not None:
            return loaded
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if (loaded := self._fresh(key)) is not None:
                return loaded
            loaded = build()
            self.store.put(key, (loaded, time.monotonic()), model_nbytes(loaded.model))
            with self._lock:
                self._key_locks.pop(key, None)
            return loaded

    def info(self) -> CacheInfo:
        return CacheInfo(len(self.store), self.store.nbytes, self.store.max_items, self.store.budget)

    def clear(self) -> None:
        self.store.clear()

    def forget(self, name: str) -> None:
        """Drop every entry of the model ``name`` (a module given again under a name it had)."""
        self.store.drop_where(lambda key, _: key[0] == name)


_CACHE = _ModelCache(
    int(os.environ.get("CNNVIZ_MODEL_CACHE", "3")),
    int(float(os.environ.get("CNNVIZ_MODEL_CACHE_MB", "2048")) * 2**20),  # 2 GiB suits a 16 GB host
)
MAX_PARAMS = int(os.environ.get("CNNVIZ_MAX_PARAMS", "350000000"))  # typed names beyond this are refused


def _construct(spec: ModelSpec) -> torch.nn.Module:
    """The library's own builder with random weights, on the current default device."""
    if spec.source == "torchvision":
        import torchvision

        return torchvision.models.get_model(spec.arch, weights=None)
    import timm

    return timm.create_model(spec.arch, pretrained=False)


_META_PARAMETERS = threading.local()  # .active: this thread moves parameters to meta as they are registered
_META_PARAMETERS_LOCK = threading.Lock()


# torch.nn.init's in-place initialisers (kaiming_normal_, uniform_, ...): on a meta tensor each one only
# dispatches through Python reference kernels, most of the time spent building a model on meta.
_INITIALISERS = tuple(
    n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_") and callable(getattr(torch.nn.init, n))
)


def _skipping_meta(initialise: Callable) -> Callable:
    """``initialise`` that returns a meta tensor untouched (it has no values to set); any other it initialises."""

    @functools.wraps(initialise)
    def wrapper(tensor, *args, **kwargs):
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return initialise(tensor, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Within the block, and only in this thread, every parameter a module registers is moved to the meta
    device at once; all other tensors stay on the CPU with real values. Peak memory is one parameter's.
    ``torch.nn.init``'s initialisers skip meta tensors meanwhile (in every thread: for a real tensor they
    are the originals)."""
    with _META_PARAMETERS_LOCK:
        original = torch.nn.Module.register_parameter
        initialisers = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}

        def register_parameter(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
            if param is not None and getattr(_META_PARAMETERS, "active", False):
                param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            original(module, name, param)

        torch.nn.Module.register_parameter = register_parameter
        for name, initialise in initialisers.items():
            setattr(torch.nn.init, name, _skipping_meta(initialise))
        _META_PARAMETERS.active = True
        try:
            yield
        finally:
            _META_PARAMETERS.active = False
            torch.nn.Module.register_parameter = original
            for name, initialise in initialisers.items():
                setattr(torch.nn.init, name, initialise)


def count_parameters(spec: ModelSpec) -> int:
    """How many parameters ``spec``'s model has, counted with no weights in memory and no download.

    The model is built on the meta device (shapes only, no data). A builder that needs real numbers
    while it builds cannot run there (torchvision's RegNets call ``.tolist()`` on a tensor: "Cannot copy
    out of meta tensor"); it runs again with its ordinary tensors on the CPU and each parameter moved to
    meta as it is registered. Either way the count is of the very module the library builds, never a
    published figure.

    >>> count_parameters(get_spec("resnet18"))
    11689512
    """
    try:
        with torch.device("meta"):
            model = _construct(spec)
    except (NotImplementedError, RuntimeError):  # data-dependent code on meta tensors
        with _parameters_on_meta():
            model = _construct(spec)
    return sum(p.numel() for p in model.parameters())


def check_size(spec: ModelSpec) -> None:
    """Refuse a typed (non-curated) model too large for a shared server (see :func:`count_parameters`).

    >>> check_size(get_spec("regnet_y_128gf"))
    Traceback (most recent call last):
    ...
    cnnviz.errors.InvalidOptionError: regnet_y_128gf has 645 M parameters; this app loads models up to 350 M (set CNNVIZ_MAX_PARAMS to change that).

    Raises:
        InvalidOptionError: the model has more than ``MAX_PARAMS`` parameters, so loading it could
            exhaust the memory every user of the server shares.
    """
    if is_curated(spec):
        return
    count = count_parameters(spec)
    if count > MAX_PARAMS:
        raise InvalidOptionError(f"{spec.key} has {_over_the_cap(count)}")


def _over_the_cap(count: int) -> str:
    """The end of a sentence refusing a model of ``count`` parameters (over ``MAX_PARAMS``)."""
    return (f"{count / 1e6:,.0f} M parameters; this app loads models up to {MAX_PARAMS / 1e6:,.0f} M "
            "(set CNNVIZ_MAX_PARAMS to change that).")


def _built_with_autograd(fn):
    """``fn`` run outside a caller's ``torch.inference_mode()``: a model built inside one would hold
    inference tensors as parameters, and once cached it would fail every later view that needs gradients
    (attribution, feature visualisation) with a torch error about inference tensors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    return wrapper


@_built_with_autograd
def load_model(
    name: str | LoadedModel, weights: str = "pretrained", device: str | torch.device | None = None
) -> LoadedModel:
    """Build (or fetch from the bounded cache) a model by name; a :class:`LoadedModel` is returned as it is
    (every view takes either).

    ``weights="pretrained"`` falls back to random weights with a notice when they cannot be had
    (see ``loaded.weights.notice``); ``"random"`` always initialises randomly. For an upload name
    (``"upload/…"``, see :func:`load_checkpoint`) ``"pretrained"`` means the user's checkpoint and
    ``"random"`` the same architecture and classes with random weights. A module's name (``"module/…"``)
    gives the module itself, or its seeded random copy, on the device it was given for; so does the handle
    :func:`from_module` returned (the one loaded model that ``weights`` still applies to).

    >>> m = load_model("resnet18", weights="random")
    >>> m.input_size, m.model.training
    ((3, 224, 224), False)
    """
    if isinstance(name, LoadedModel):
        if not (name.spec.key.startswith(MODULE_PREFIX) and name.weights.pretrained and weights == "random"):
            return name
        name = name.spec.key  # from_module's handle asked for random weights: its seeded random copy
    spec = get_spec(name)
    weights = vocab.option(vocab.Weights, weights, "weights choice")
    dev = resolve_device(device)
    if spec.key.startswith(checkpoint.UPLOAD_PREFIX):
        return _load_upload(spec.key, weights, dev)
    if spec.key.startswith(MODULE_PREFIX):
        return _load_module(spec.key, weights, dev)

    def build() -> LoadedModel:
        check_size(spec)
        return _build(spec, weights == "pretrained", dev)

    return _CACHE.get((spec.key, weights, str(dev)), build)


def cache_info() -> CacheInfo:
    """How many models the cache holds and their bytes, with its bounds.

    >>> info = cache_info()
    >>> info.count <= info.capacity
    True
    """
    return _CACHE.info()


def clear_cache() -> None:
    """Forget every loaded model (tests use this)."""
    _CACHE.clear()


# --------------------------------------------------------------------------------------------------
# The user's own checkpoints: "upload/<32 hex>" names
# --------------------------------------------------------------------------------------------------

MAX_UPLOADS = int(os.environ.get("CNNVIZ_UPLOADS", "64"))  # upload names remembered (LRU); models are in _CACHE
UPLOADS_BYTES = MAX_UPLOADS * 1024  # ~1 KB a record (names, labels, the report)
# Auxiliary classifiers torchvision builds for these architectures (see pretrained.torchvision_build_kwargs); a
# checkpoint may hold them (trained with aux_logits=True) or not (saved from a torchvision model).
_AUX_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
_RECORD = "checkpoint.upload"  # LoadedModel.derived key of an upload's record


@dataclass(frozen=True)
class _Upload:
    """What the server keeps of an upload: enough to rebuild its model from the file."""

    spec: ModelSpec  # key "upload/…", source and arch of the base architecture
    base: ModelSpec
    path: str  # where the checkpoint was read (rebuilt from there after the model cache dropped it)
    filename: str  # as the user named it
    labels: tuple[str, ...] | None  # the user's labels (part of the name)
    categories: tuple[str, ...] | None
    num_classes: int | None
    aux: bool  # the checkpoint holds googlenet/inception_v3 auxiliary classifiers
    report: checkpoint.CheckpointReport


def _forgotten(name: str) -> UnknownModelError:
    return UnknownModelError(
        f"No uploaded checkpoint is called {quoted(name)} on this server now: uploads are kept only while the "
        "server holds them. Upload the file again."
    )


class _Uploads:
    """The upload names this process knows (a :class:`cnnviz.cache.Store`: least recently used dropped beyond
    ``MAX_UPLOADS`` names; each record is a few hundred bytes, its model lives in the model cache)."""

    def __init__(self, capacity: int) -> None:
        self.store: cache.Store[_Upload] = cache.Store("upload names", UPLOADS_BYTES, max_items=max(1, capacity))

    def get(self, name: str) -> _Upload:
        record = self.store.get(name)
        if record is None:
            raise _forgotten(name)
        return record

    def put(self, record: _Upload) -> None:
        self.store.put(record.spec.key, record, 1024)

    def clear(self) -> None:
        self.store.clear()


_UPLOADS = _Uploads(MAX_UPLOADS)


def _without_aux(arch: str, model: torch.nn.Module) -> torch.nn.Module:
    """googlenet / inception_v3 without their auxiliary classifiers (a checkpoint that has none)."""
    if arch == "inception_v3":
        model.aux_logits = False
        model.AuxLogits = None
        return model
    return pretrained.drop_aux_heads(arch, model)


def _architecture(base: ModelSpec, num_classes: int | None, aux: bool, skeleton: bool) -> torch.nn.Module:
    """``base``'s architecture as the app builds it, with ``num_classes`` outputs (None: its own).

    ``skeleton=True``: parameters on the meta device, never initialised (a checkpoint will be assigned to
    them); buffers are real, so non-persistent ones keep their values. A builder that computes with its
    parameters while it builds is built for real instead.
    """

    def construct() -> torch.nn.Module:
        if base.source == "torchvision":
            import torchvision

            enum = pretrained.torchvision_default_weights(base.arch)
            kwargs = pretrained.torchvision_build_kwargs(base.arch, enum, loading=skeleton)
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            model = torchvision.models.get_model(base.arch, weights=None, **kwargs)
            return model if aux or base.arch not in _AUX_PREFIXES else _without_aux(base.arch, model)
        import timm

        return timm.create_model(base.arch, pretrained=False, **({} if num_classes is None else {"num_classes": num_classes}))

    if not skeleton:
        return construct()
    try:
        with _parameters_on_meta():
            return construct()
    except (NotImplementedError, RuntimeError):  # e.g. .item() on a parameter while building
        return construct()


def _preprocessing(base: ModelSpec, model: torch.nn.Module) -> tuple[Callable, tuple[int, int, int], tuple[str, ...] | None, int | None]:
    """(transform, input size, the architecture's own labels, its number of classes), exactly as :func:`_build`
    has them: torchvision's DEFAULT weights' transforms and categories, or timm's data config."""
    if base.source == "torchvision":
        enum = pretrained.torchvision_default_weights(base.arch)
        transform, input_size = pretrained.torchvision_transform(enum)
        return transform, input_size, pretrained.torchvision_categories(enum), len(enum.meta["categories"])
    transform, input_size = pretrained.timm_transform(model)
    return transform, input_size, pretrained.timm_categories(model), getattr(model, "num_classes", None) or None


def _upload_from_file(
    name: str, base: ModelSpec, file: checkpoint.CheckpointFile, labels: tuple[str, ...] | None, device: torch.device
) -> LoadedModel:
    """Read, fit and load a checkpoint into ``base``'s architecture; remember the upload. Every limit
    (the file's, its tensors', the parameters of the model it builds) is checked before a tensor is
    copied or the model is built; running out of memory all the same is said in a sentence."""
    with checkpoint.allocation_errors(file.filename):
        return _fitted_upload(name, base, file, labels, device)


def _fitted_upload(
    name: str, base: ModelSpec, file: checkpoint.CheckpointFile, labels: tuple[str, ...] | None, device: torch.device
) -> LoadedModel:
    state, read_notes = checkpoint.read_state_dict(file)
    filename = file.filename
    shown = checkpoint.display_filename(filename)
    aux = any(k.startswith(_AUX_PREFIXES.get(base.arch, ("\0",))) for k in state)
    model = _architecture(base, None, aux, skeleton=True)
    transform, input_size, own, classes = _preprocessing(base, model)
    where = base.key if base.display == base.key else f"{base.key} ({base.display})"
    fit = checkpoint.fit_state_dict(model, state, name=where, classes=classes)
    notes = [*read_notes, *fit.notes]
    num_classes = classes
    if fit.num_classes is not None:
        num_classes = fit.num_classes
        count = checkpoint.fitted_parameters(model, fit.state)
        if count > MAX_PARAMS:  # the same limit as a typed name's, counted before the model is built
            raise CheckpointError(
                f"This checkpoint builds {base.key} with {num_classes:,} classes, which has {_over_the_cap(count)}"
            )
        notes.append(f"its classifier has {num_classes} classes, not {classes}, so {base.key} was built with {num_classes}")
        model = _architecture(base, num_classes, aux, skeleton=True)
        fit = checkpoint.fit_state_dict(model, fit.state, name=f"{where} with {num_classes} classes")
        notes.extend(fit.notes)
    if num_classes:
        categories, kind = checkpoint.choose_categories(num_classes, labels, own)
    elif labels is not None:
        raise CheckpointError(f"{base.key} has no class outputs, so a labels file does not apply to it.")
    else:
        categories, kind = None, None
    checkpoint.check_finite(fit.state, filename)
    try:
        _, load_notes = checkpoint.load_weights(model, fit.state)
    except checkpoint.MetaTensorsLeft:  # a tensor outside the state dict was left on meta: build for real, load again
        model = _architecture(base, num_classes, aux, skeleton=False)
        try:
            _, load_notes = checkpoint.load_weights(model, fit.state)
        except checkpoint.MetaTensorsLeft as e:
            raise CheckpointError(f"The checkpoint {quoted(filename)} could not be loaded into {where}: {e}.") from e
    notes.extend(load_notes)
    model = pretrained.drop_aux_heads(base.arch, model).eval().to(device)  # googlenet: as torchvision does
    spec = ModelSpec(name, base.source, base.arch, f"{base.display} · your checkpoint {shown}")
    report = checkpoint.CheckpointReport(
        name=name, model=base.key, display=spec.display, filename=shown, tensors=len(state),
        parameters=sum(p.numel() for p in model.parameters()), num_classes=num_classes, labels=kind, notes=tuple(notes),
    )
    record = _Upload(spec, base, file.path, filename, labels, categories, num_classes, aux, report)
    _UPLOADS.put(record)
    outcome = WeightsOutcome(pretrained=True, source=f"your checkpoint {shown} ({len(state)} tensors)", notice=None)
    loaded = LoadedModel(spec, model, transform, input_size, categories, outcome, device)
    loaded.memo(_RECORD, lambda: record)
    return loaded


def _random_upload(record: _Upload, device: torch.device) -> LoadedModel:
    """An upload's architecture, classes and labels with random weights (trained vs untrained)."""
    with seeded(record.spec.key):
        model = _architecture(record.base, record.num_classes, record.aux, skeleton=False)
    model = pretrained.drop_aux_heads(record.base.arch, model).eval().to(device)
    transform, input_size, _, _ = _preprocessing(record.base, model)
    outcome = WeightsOutcome(pretrained=False, source=pretrained.RANDOM_SOURCE, notice=None)
    loaded = LoadedModel(record.spec, model, transform, input_size, record.categories, outcome, device)
    loaded.memo(_RECORD, lambda: record)
    return loaded


def _load_upload(name: str, choice: str, device: torch.device) -> LoadedModel:
    """``load_model`` for an upload name: from the model cache, else rebuilt from the file it came from."""
    record = _UPLOADS.get(name)
    if choice == "random":
        return _CACHE.get((name, choice, str(device)), lambda: _random_upload(record, device))

    def build() -> LoadedModel:
        try:
            file = checkpoint.open_checkpoint(record.path)
            found = checkpoint.file_name(file, record.base.key, record.labels)
        except CheckpointError as e:  # gone, or changed into something unreadable
            raise _forgotten(name) from e
        if found != name:  # another file is there now
            raise _forgotten(name)
        return _upload_from_file(name, record.base, file, record.labels, device)

    return _CACHE.get((name, choice, str(device)), build)


@_built_with_autograd
def load_checkpoint(
    model: str,
    path: str | os.PathLike,
    labels: str | os.PathLike | Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> checkpoint.CheckpointReport:
    """Load the user's checkpoint at ``path`` into the architecture ``model`` and name it ``"upload/<32 hex>"``.

    ``model`` is any model name (curated, torchvision or timm); an upload name stands for its architecture.
    ``path`` is a ``.safetensors`` or PyTorch (``.pt .pth .bin .ckpt``) file holding a state dict, bare or as
    training scripts save it (see :mod:`cnnviz.checkpoint`); it is read safely (never unpickling objects).
    When only the classifier differs in its number of classes N, the architecture is built with N classes.
    ``labels``: a UTF-8 text file with one class name per line (or a list of names), N of them; without
    one, a 1000-class checkpoint keeps the architecture's ImageNet labels and others have none.

    The name is an HMAC of the architecture, the file (and the labels) under a per-process secret: the same
    file gets the same name, and only those who have it can name it. Use the name with every function and
    endpoint (``load_model(name)``: the checkpoint; ``load_model(name, "random")``: the same architecture
    untrained) while the server holds it: the model lives in the bounded model cache (rebuilt from the file
    while the file exists) and the name among the last ``MAX_UPLOADS``. The caller vouches for ``path``
    (the app passes only files that came through its upload route).

    >>> import tempfile, torchvision, safetensors.torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = folder.name + "/mine.safetensors"
    >>> safetensors.torch.save_file(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    >>> report = load_checkpoint("resnet18", path)
    >>> report.name.startswith("upload/"), report.num_classes, report.labels, report.tensors
    (True, 10, None, 122)
    >>> load_model(report.name).weights.source
    'your checkpoint mine.safetensors (122 tensors)'
    >>> folder.cleanup()

    Raises:
        UnknownModelError: ``model`` is not a model name (or an upload name this server no longer holds).
        InvalidOptionError: ``model`` has more than ``MAX_PARAMS`` parameters (as for :func:`load_model`).
        CheckpointError: the file cannot be read safely (wrong type, too large, damaged, pickled objects, a
            TorchScript program, more tensors or bytes than the limits in :mod:`cnnviz.checkpoint`), does not
            fit the architecture (naming the missing, unexpected and mis-shaped keys), would build a model of
            more than ``MAX_PARAMS`` parameters (its classifier's classes), holds NaN or infinite weights, the
            server ran out of memory, or the labels do not match its classes.
    """
    base = get_spec(model)
    if base.key.startswith(MODULE_PREFIX):
        raise CheckpointError(f"{base.key} is a module given in Python: load a checkpoint into it before giving it "
                              "(module.load_state_dict, or `cnnviz serve --model ... --checkpoint FILE`).")
    if base.key.startswith(checkpoint.UPLOAD_PREFIX):
        base = _UPLOADS.get(base.key).base
    check_size(base)  # the architecture as a typed name would be: refused before the file is read
    if labels is None:
        names = None
    elif isinstance(labels, (str, os.PathLike)):
        names = checkpoint.read_labels(labels)
    else:
        names = checkpoint.parse_labels("\n".join(str(label) for label in labels))
    dev = resolve_device(device)
    file = checkpoint.open_checkpoint(path)
    name = checkpoint.file_name(file, base.key, names)
    # Parsed and built once per name (the cache's per-key lock), not at all when the model is cached.
    loaded = _CACHE.get((name, "pretrained", str(dev)), lambda: _upload_from_file(name, base, file, names, dev))
    record = loaded.derived[_RECORD]
    _UPLOADS.put(dataclasses.replace(record, path=file.path))  # the newest copy of the file, the likeliest to exist
    return record.report


def clear_uploads() -> None:
    """Forget every upload name (tests and benchmarks use this; their models stay in the cache until evicted)."""
    _UPLOADS.clear()


# --------------------------------------------------------------------------------------------------
# Modules given in Python (a notebook's from_module, the operator's `cnnviz serve --model`): "module/<name>"
# --------------------------------------------------------------------------------------------------

MODULE_PREFIX = "module/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODULE_NAME_RE = re.compile(r"[^a-z0-9_.\-]+")


@dataclass(frozen=True)
class _Module:
    """A module this process was given: its own weights are ``own``; a random copy is built on demand."""

    own: LoadedModel


_MODULES: dict[str, _Module] = {}  # key -> record; the caller's own objects, so never evicted
_MODULES_LOCK = threading.Lock()


class _CoverCrop:
    """Resize a picture so it covers ``(height, width)`` keeping its aspect, then crop the centre: what
    a square model's resize-then-crop does, for any input size."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        scale = max(height / image.height, width / image.width)
        resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                               Image.Resampling.BILINEAR)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))

    def __repr__(self) -> str:
        return f"CoverCrop(size={self.size})"


def module_transform(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> Callable:
    """PIL RGB -> ``Tensor[3,H,W]`` float32 for an ``input_size`` of ``(3, H, W)``: cover, centre crop,
    scale to [0, 1], normalise with ``mean`` / ``std``.

    >>> from PIL import Image
    >>> module_transform((3, 96, 128), IMAGENET_MEAN, IMAGENET_STD)(Image.new("RGB", (640, 480))).shape
    torch.Size([3, 96, 128])
    """
    import torchvision.transforms as T

    return T.Compose([_CoverCrop((int(input_size[1]), int(input_size[2]))), T.ToTensor(),
                      T.Normalize([float(v) for v in mean], [float(v) for v in std])])


def _module_key(name: str) -> str:
    """``"module/<name>"`` in the characters every model name may hold (lower case, as names are compared)."""
    cleaned = _MODULE_NAME_RE.sub("-", name.strip().lower()).strip("-.")
    if not cleaned:
        raise InvalidOptionError(f"A module's name needs a letter or a digit; {quoted(name)} has none.")
    return MODULE_PREFIX + cleaned[:100]


def _check_module_input(module: torch.nn.Module, input_size: tuple[int, int, int], labels, key: str, device):
    """One forward pass on zeros: the module runs at ``input_size``, and its labels count its outputs."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *input_size, device=device))
    except Exception as e:  # the caller's own code: any error means it does not run at this size
        raise InvalidOptionError(f"{key} does not run on an input of {tuple(input_size)}: {type(e).__name__}: "
                                 f"{str(e)[:200]}. Give from_module the input_size it takes.") from e
    if labels is not None:
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise InvalidOptionError(f"{key} has no class outputs (its output is not [batch, classes]), so labels "
                                     "do not apply to it.")
        if out.shape[1] != len(labels):
            raise InvalidOptionError(f"{key} has {out.shape[1]} class outputs but {len(labels)} labels were given.")


def from_module(
    module: torch.nn.Module,
    *,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    input_size: Sequence[int] = (3, 224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    labels: Sequence[str] | None = None,
    name: str | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Make any ``nn.Module`` (image in, maps or class scores out) a model of this library, named
    ``"module/<name>"``: every view function takes the handle returned (or that name) wherever it takes a
    model name, and the app started afterwards in this process lists it (see :func:`cnnviz.launch`).

    ``module`` is put in eval mode and moved to ``device`` (``"auto"``: as :func:`load_model`); it is used
    as it is, not copied: its own weights are the ``"pretrained"`` choice. ``"random"`` is a copy with
    every submodule's ``reset_parameters()`` run under a seed made from the name (the same name gives the
    same random weights; parameters a module does not reset keep their values). ``transform`` maps a PIL RGB
    picture to ``Tensor[3,H,W]`` float32 (it should end in a ``Normalize`` for pictures to be shown undone);
    without one: cover ``input_size`` = ``(3, H, W)`` keeping the aspect, crop the centre, normalise with
    ``mean`` / ``std``. ``labels``: one per class output. ``name`` defaults to the module's class name; giving
    a name again replaces the module it named.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    >>> handle = from_module(net, input_size=(3, 64, 96), labels=["cat", "dog"], name="Tiny Net")
    >>> handle.spec.key, handle.input_size, handle.categories, load_model("module/tiny-net") is handle
    ('module/tiny-net', (3, 64, 96), ('cat', 'dog'), True)
    >>> load_model(handle, "random").weights.source
    'random initialisation (seeded by the name module/tiny-net)'

    Raises:
        InvalidOptionError: ``module`` is not an ``nn.Module``, ``input_size`` is not ``(3, H, W)``, the module
            fails on an input of that size, or ``labels`` do not count its class outputs.
    """
    if not isinstance(module, torch.nn.Module):
        raise InvalidOptionError(f"from_module takes a torch.nn.Module, not {type(module).__name__}.")
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or size[0] != 3 or min(size) < 1:
        raise InvalidOptionError(f"input_size is (3, height, width) for an RGB picture, not {tuple(input_size)}.")
    key = _module_key(name or type(module).__name__)
    names = None if labels is None else tuple(str(label) for label in labels)
    dev = resolve_device(device)
    module = module.eval().to(dev)
    _check_module_input(module, size, names, key, dev)
    display = (name or type(module).__name__).strip()[:80]
    spec = ModelSpec(key, "module", type(module).__name__, display)
    outcome = WeightsOutcome(pretrained=True, source=f"the module's own weights ({type(module).__name__})")
    own = LoadedModel(spec, module, transform or module_transform(size, mean, std), size, names, outcome, dev)
    with _MODULES_LOCK:
        _MODULES[key] = _Module(own)
    _CACHE.forget(key)  # a random copy of a module this name named before
    return own


def _module_record(key: str) -> _Module:
    with _MODULES_LOCK:
        record = _MODULES.get(key)
    if record is None:
        known = ", ".join(sorted(_MODULES)) or "none"
        raise UnknownModelError(f"No module is called {quoted(key)} in this process (modules given: {known}). "
                                "Give it with cnnviz.from_module(...) or `cnnviz serve --model`.")
    return record


def module_specs() -> list[ModelSpec]:
    """The specs of the modules given to this process, newest first (what a model picker lists first)."""
    with _MODULES_LOCK:
        return [record.own.spec for record in reversed(list(_MODULES.values()))]


def clear_modules() -> None:
    """Forget every module given to this process and its random copies (tests use this)."""
    with _MODULES_LOCK:
        keys = list(_MODULES)
        _MODULES.clear()
    for key in keys:
        _CACHE.forget(key)


def _random_module(record: _Module) -> LoadedModel:
    """A copy of the module with every ``reset_parameters()`` run under the name's seed (on the CPU, where
    :func:`seeded` acts, then moved to the module's device)."""
    own = record.own
    model = copy.deepcopy(own.model).cpu()
    with seeded(own.spec.key):
        for sub in model.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    outcome = WeightsOutcome(pretrained=False, source=f"{pretrained.RANDOM_SOURCE} (seeded by the name {own.spec.key})")
    model = model.eval().to(own.device)
    return LoadedModel(own.spec, model, own.transform, own.input_size, own.categories, outcome, own.device)


def _load_module(key: str, choice: str, device: torch.device) -> LoadedModel:
    """``load_model`` for a module name: the module itself, or its seeded random copy (in the model cache)."""
    record = _module_record(key)
    if choice == "pretrained":
        return record.own
    return _CACHE.get((key, choice, str(record.own.device)), lambda: _random_module(record))


def load_module_weights(module: torch.nn.Module, path: str | os.PathLike) -> tuple[str, ...]:
    """Load a checkpoint file into ``module`` with the safe reader (:mod:`cnnviz.checkpoint`: safetensors or a
    PyTorch state dict, never unpickling objects), key for key; returns what was done, in words.

    Raises:
        CheckpointError: the file cannot be read safely, or does not fit ``module`` (naming the keys).
    """
    file = checkpoint.open_checkpoint(path)
    with checkpoint.allocation_errors(file.filename):
        state, notes = checkpoint.read_state_dict(file)
        fit = checkpoint.fit_state_dict(module, state, name=type(module).__name__)
        checkpoint.check_finite(fit.state, file.filename)
        _, loaded = checkpoint.load_weights(module, fit.state)
    return (*notes, *fit.notes, *loaded)
