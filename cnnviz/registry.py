"""The model registry: curated specs as data and name resolution. Nothing here builds a model
(:mod:`cnnviz.loading` does).

A name is resolved in this order (see :func:`get_spec`):

1. a curated key (``"alexnet"``, ``"timm/resnet50.a1_in1k"``);
2. ``"torchvision/<name>"`` or ``"timm/<name>[.<tag>]"``, the library named explicitly;
3. a bare name: torchvision's classification model when torchvision has one, else timm's.

The names :mod:`cnnviz.loading` adds at run time (``"upload/<32 hex>"``, a user's checkpoint; ``"module/<name>"``,
a module given in Python) are resolved there. Nothing else (paths, hub repos, code) is ever accepted as a model
name.
"""
from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Literal

from .errors import UnknownModelError, did_you_mean, quoted

Source = Literal["torchvision", "timm"]
DEFAULT_MODEL = "alexnet"
OFFLINE_MODEL = "timm/tf_efficientnet_lite0"

_NAME_RE = re.compile(r"^(?:(torchvision|timm)/)?([A-Za-z0-9][A-Za-z0-9_.\-]{0,99})$")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    >>> get_spec("resnet18").source
    'torchvision'
    """

    key: str  # what the UI and API use: "alexnet", "timm/resnet50.a1_in1k"
    source: Source
    arch: str  # the name the library builds: "alexnet", "resnet50.a1_in1k"
    display: str  # "AlexNet"
    note: str = ""

    @property
    def label(self) -> str:
        """Selector label naming the library, e.g. ``"ResNet-50 (a1) · timm"``."""
        suffix = f" — {self.note}" if self.note else ""
        return f"{self.display} · {self.source}{suffix}"


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a curated spec; a duplicate key is a programming error and raises."""
    if spec.key in _REGISTRY:
        raise ValueError(f"model {spec.key!r} is already registered")
    _REGISTRY[spec.key] = spec
    return spec


def _tv(arch: str, display: str, note: str = "") -> ModelSpec:
    return register_model(ModelSpec(arch, "torchvision", arch, display, note))


def _timm(arch: str, display: str, note: str = "") -> ModelSpec:
    return register_model(ModelSpec(f"timm/{arch}", "timm", arch, display, note))


_tv("alexnet", "AlexNet")
_tv("vgg16", "VGG16")
_tv("resnet18", "ResNet-18")
_tv("resnet50", "ResNet-50")
_tv("googlenet", "GoogLeNet")
_tv("densenet121", "DenseNet-121")
_tv("squeezenet1_1", "SqueezeNet 1.1")
_tv("mobilenet_v2", "MobileNetV2")
_tv("mobilenet_v3_large", "MobileNetV3-Large")
_tv("efficientnet_b0", "EfficientNet-B0")
_tv("regnet_y_400mf", "RegNetY-400MF")
_tv("convnext_tiny", "ConvNeXt-Tiny")
_timm("tf_efficientnet_lite0", "EfficientNet-Lite0 (TF)", "ImageNet weights bundled, works offline")
_timm("resnet50.a1_in1k", "ResNet-50 (a1)")
_timm("efficientnet_b0.ra_in1k", "EfficientNet-B0")
_timm("mobilenetv3_large_100.ra_in1k", "MobileNetV3-Large 1.0")
_timm("mobilenetv4_conv_small.e2400_r224_in1k", "MobileNetV4-Conv-Small")
_timm("convnext_tiny.fb_in1k", "ConvNeXt-Tiny")
_timm("regnety_008.pycls_in1k", "RegNetY-800MF")
_timm("cspdarknet53.ra_in1k", "CSPDarknet-53")
_timm("rexnet_100.nav_in1k", "ReXNet 1.0")
_timm("ghostnet_100.in1k", "GhostNet 1.0")
_timm("ese_vovnet19b_dw.ra_in1k", "VoVNet-19b-dw (eSE)")


def list_models(
    source: Source | None = None, include: str | None = None, exclude: str | None = None
) -> list[str]:
    """Curated model keys, optionally filtered by library and fnmatch patterns, in registry order.

    >>> list_models(source="torchvision", include="resnet*")
    ['resnet18', 'resnet50']
    """
    keys = [s.key for s in _REGISTRY.values() if source is None or s.source == source]
    if include:
        keys = [k for k in keys if fnmatch.fnmatch(k, include)]
    if exclude:
        keys = [k for k in keys if not fnmatch.fnmatch(k, exclude)]
    return keys


def curated_specs() -> list[ModelSpec]:
    """All curated specs in registry order (torchvision first, then timm)."""
    return list(_REGISTRY.values())


@functools.cache
def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def _timm_pretrained_tags() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models(pretrained=True))


def _timm_exists(name: str) -> bool:
    import timm

    if "." in name:  # timm.is_model() accepts any tag; check the tag really exists
        return name in _timm_pretrained_tags()
    return timm.is_model(name)


def _unknown(name: str) -> UnknownModelError:
    import timm

    pool = list(_REGISTRY) + sorted(_torchvision_names()) + timm.list_models()
    bare = name.split("/", 1)[-1]
    hint = did_you_mean(bare, pool)
    return UnknownModelError(
        f"Unknown model {quoted(name)}. Use a name from the list, any torchvision classification model "
        f"(e.g. 'resnet34') or any timm model (e.g. 'timm/resnet50.a1_in1k').{hint}"
    )


def get_spec(name: str) -> ModelSpec:
    """Resolve a user-given model name to a spec, or raise :class:`UnknownModelError`.

    >>> get_spec("timm/resnet50").key, get_spec("ResNet50").key
    ('timm/resnet50', 'resnet50')
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError("No model name given. Pick a model from the list.")
    name = name.strip()
    lowered = name.lower()  # both libraries name their models in lower case: "ResNet50" is resnet50
    if lowered in _REGISTRY:
        return _REGISTRY[lowered]
    match = _NAME_RE.match(lowered)
    if match is None:
        raise UnknownModelError(
            f"Not a model name: {name[:80]!r}. Names contain only letters, digits, '_', '.', '-', "
            "optionally prefixed by 'torchvision/' or 'timm/' (or 'upload/<32 hex>', a checkpoint you loaded)."
        )
    library, arch = match.groups()
    if library in (None, "torchvision") and arch in _torchvision_names():
        return _REGISTRY.get(arch) or ModelSpec(arch, "torchvision", arch, arch)
    if library in (None, "timm") and _timm_exists(arch):
        key = f"timm/{arch}"
        return _REGISTRY.get(key) or ModelSpec(key, "timm", arch, arch)
    raise _unknown(name)


def is_curated(spec: ModelSpec) -> bool:
    """Whether ``spec`` is one of the curated entries (their sizes are known to suit the server).

    >>> is_curated(get_spec("alexnet")), is_curated(get_spec("resnet34"))
    (True, False)
    """
    return _REGISTRY.get(spec.key) == spec
