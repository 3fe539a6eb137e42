"""Why the model decided (class activation maps; for a vision transformer LeGrad, beside the rollouts
of :mod:`cnnviz.rollout`) and what a channel responds to in this photo (Zeiler–Fergus projections).
The only module that imports the CAM library (``torchcam``) and the attribution library (``captum``).

Every pass here holds the model's lock, runs in eval mode with each module's own training flag
restored afterwards, removes every hook it (or a library) registered, also when it raises, and turns
gradients on even when the caller is under ``torch.no_grad()`` or ``torch.inference_mode()``. The
shared model's parameters are never changed (their ``requires_grad`` included): gradients flow from
a copy of the input that requires them.
"""
from __future__ import annotations

import copy
import functools
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from . import vocab
from .errors import CnnvizError, InvalidOptionError, did_you_mean, quoted
from .hooks import eval_mode, forward_hooks, interruptible, relus_out_of_place
from .layers import LayerInfo, get_layer, list_layers
from .rollout import TokenMap, class_scores, vit_layout

if TYPE_CHECKING:
    from .loading import LoadedModel

CAM_METHODS = vocab.values(vocab.CamMethod)
CAM_NAMES = {m.value: m.label for m in vocab.CamMethod}
PROJECTIONS = vocab.values(vocab.Projection)
PROJECTION_NAMES = {m.value: m.label for m in vocab.Projection}
SCORECAM_BATCH = 32  # masked copies of the input per forward pass, at most (cnnviz.budget may choose fewer)
MAX_SCORECAM_CHANNELS = 4096  # Score-CAM runs one masked input per channel: more is minutes of CPU
MASKING_METHODS = ("scorecam", "sscam", "iscam")  # one masked copy of the input per channel (and sample): batched, own model copy
CAM_SAMPLES = {"sscam": 35, "iscam": 10, "smoothgradcampp": 4}  # torchcam's defaults: noisy samples / integration steps
NOISE_SEED = 0  # SS-CAM and Smooth Grad-CAM++ draw noise: seeded, so a link gives the same map again
LEGRAD_BLOCKS = 4  # LeGrad averages the last four blocks' maps (torchcam's documented use)


def _outside_inference_mode(fn):
    """Run ``fn`` with inference mode off (a caller's ``torch.inference_mode()`` would forbid the
    gradients, and the version counters the layer listing reads); tensor arguments come in as
    ordinary copies."""

    @functools.wraps(fn)
    def wrapper(loaded, x, *args, **kwargs):
        with torch.inference_mode(False):
            return fn(loaded, x.detach().clone() if x.is_inference() else x, *args, **kwargs)

    return wrapper


@contextmanager
def gradients_on() -> Iterator[None]:
    """Autograd on inside the block, whatever the caller's ``no_grad`` / ``inference_mode``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _input_with_grad(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` that requires grad (so gradients reach every layer even when the model's
    parameters are frozen); call inside :func:`gradients_on` (an inference tensor is copied out)."""
    return x.detach().clone().requires_grad_(True)


@contextmanager
def _fresh_output(module: torch.nn.Module, info: LayerInfo) -> Iterator[None]:
    """For a layer whose output a later in-place op overwrites (``ReLU(inplace=True)``), hand the rest
    of the network a copy, so the layer's own output (and its gradient) stay as the layer made them.
    Hooks run in the order they were registered: enter it after a library's hooks that keep the output
    as it is (torchcam's), so those see the layer's own tensor, not the copy (captum clones by itself)."""
    if not info.overwritten:
        yield
        return
    owner = threading.get_ident()

    def copy(_module, _inputs, output):
        return output.clone() if threading.get_ident() == owner and isinstance(output, torch.Tensor) else None

    handle = module.register_forward_hook(copy)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _graph_starts_at(module: torch.nn.Module, on: bool = True) -> Iterator[None]:
    """With ``on``, a pass run inside ``torch.no_grad()`` keeps its graph only from ``module`` on: its
    output becomes a new leaf that requires grad (what every other hook on the module then sees: this
    one runs first) and gradients are on for the rest of the pass; leaving the ``no_grad`` block
    restores the caller's mode. Nothing before the layer is kept for a backward pass."""
    if not on:
        yield
        return
    owner = threading.get_ident()

    def start(_module, _inputs, output):
        if threading.get_ident() != owner or not isinstance(output, torch.Tensor):
            return None
        torch.set_grad_enabled(True)  # for the rest of this pass only: the no_grad block around it restores the mode
        return output.detach().requires_grad_(True)

    handle = module.register_forward_hook(start, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def graph_from_layer(info: LayerInfo) -> bool:
    """Whether a gradient CAM at ``info`` keeps its graph only from the layer on: yes for a layer that
    runs once per pass (the map's gradient needs nothing made before it); a layer that runs more than
    once keeps the whole graph, so the gradient reaches the call the CAM library keeps."""
    return info.calls == 1


def _to_nchw(info: LayerInfo):
    """torchcam's ``reshape_transform`` for a layer: its raw output → ``[N,C,H,W]`` (None for NCHW)."""
    c, h, w = info.shape
    if info.layout == "NHWC":
        return lambda t: t.permute(0, 3, 1, 2)
    if info.layout == "tokens":
        return lambda t: t[:, info.prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)
    return None


def default_layer(loaded: LoadedModel) -> LayerInfo:
    """The default target layer: the last map of the image before the network pools it away — the
    listed layer (run once per pass, more than one position, not a pooling) whose output is made last. Found with one pass on zeros, once per loaded model.

    >>> from cnnviz.loading import load_model
    >>> default_layer(load_model("resnet18", "random")).name
    'layer4'
    """

    def compute() -> str:
        listed = list_layers(loaded)
        if not listed:
            raise CnnvizError(f"{loaded.spec.display} has no layer whose output is a map of the image.")
        ends: list[str] = []
        x = torch.zeros((1, *loaded.input_size), device=loaded.device)
        names = [layer.name for layer in listed if layer.calls == 1]
        with loaded.lock, torch.no_grad(), forward_hooks(loaded.model, names, lambda n, _i, _o: ends.append(n)):
            loaded.model(x)
        by_name = {layer.name: layer for layer in listed}
        order = list(dict.fromkeys(reversed(ends)))  # last made first
        for name in order:
            layer = by_name[name]
            if layer.shape[1] * layer.shape[2] > 1 and "Pool" not in layer.type:
                return name
        return listed[-1].name

    return get_layer(loaded, loaded.memo("attribution.default_layer", compute))


def resolve_layer(loaded: LoadedModel, layer: LayerInfo | str | None) -> LayerInfo:
    """``layer`` as a listed layer; None or "" is :func:`default_layer`."""
    if isinstance(layer, LayerInfo):
        return layer
    return default_layer(loaded) if not layer else get_layer(loaded, layer)


@dataclass(frozen=True)
class ClassMap:
    """A class activation map and what it explains."""

    map: torch.Tensor  # Tensor[h,w] float32 at the target layer's resolution, raw (not min-max scaled)
    class_index: int  # the class explained
    probability: float  # the model's softmax probability for that class
    top_class: int  # the model's own top class for this input
    layer: LayerInfo  # the target layer
    method: str  # one of CAM_METHODS
    logits: torch.Tensor  # Tensor[1,N] float32 cpu: the class scores of the same pass (for a top-5)


def _torchcam_extractor(method: str, model: torch.nn.Module, name: str, input_shape, reshape, batch: int,
                        samples: int | None):
    from torchcam.methods import ISCAM, SSCAM, GradCAM, GradCAMpp, LayerCAM, ScoreCAM, SmoothGradCAMpp, XGradCAM

    common = dict(input_shape=input_shape, reshape_transform=reshape)
    if method in MASKING_METHODS:
        kind = {"scorecam": ScoreCAM, "sscam": SSCAM, "iscam": ISCAM}[method]
        extra = {} if method == "scorecam" else {"num_samples": samples or CAM_SAMPLES[method]}
        return kind(model, name, batch_size=batch, **extra, **common)
    if method == "smoothgradcampp":
        return SmoothGradCAMpp(model, name, num_samples=samples or CAM_SAMPLES[method], **common)
    kinds = {"gradcam": GradCAM, "gradcampp": GradCAMpp, "layercam": LayerCAM, "xgradcam": XGradCAM}
    return kinds[method](model, name, **common)


def own_copy(loaded: LoadedModel) -> torch.nn.Module:
    """A private copy of the model for a long run of passes (Score-CAM: one per channel), so the shared
    model's lock is not held for minutes and other requests on the model go on meanwhile. Copied under
    the lock: no other request's hooked pass is running, so no hook of theirs is copied."""
    with loaded.lock:
        return copy.deepcopy(loaded.model)


@_outside_inference_mode
def class_activation_map(
    loaded: LoadedModel,
    x: torch.Tensor,
    method: str = "gradcam",
    target_class: int | None = None,
    layer: LayerInfo | str | None = None,
    batch: int = SCORECAM_BATCH,
    samples: int | None = None,
) -> ClassMap:
    """The ``method`` class activation map of ``x`` (``Tensor[1,3,H,W]``, the model's input) for
    ``target_class`` (None: the model's top class) at ``layer`` (None: :func:`default_layer`).

    Gradient methods keep the graph only from the target layer on where :func:`graph_from_layer`
    (the same map, for a fraction of the memory); Score-CAM, SS-CAM and IS-CAM keep no graph and score
    their masked copies of the input ``batch`` at a time (the map does not depend on ``batch``; the
    memory does) on their own copy of the model. ``samples``: SS-CAM's and Smooth Grad-CAM++'s noisy
    samples, IS-CAM's integration steps (None: :data:`CAM_SAMPLES`, torchcam's defaults); their noise is
    drawn from a fixed seed, so the same request gives the same map.
    Every pass runs under :func:`cnnviz.hooks.interruptible`, so a stop check lands within one module.

    Raises:
        InvalidOptionError: unknown method, a class index outside the model's outputs, or Score-CAM
            on a layer with more channels than it can mask in reasonable time.
        UnknownLayerError: no listed layer of that name.

    >>> from cnnviz.loading import load_model
    >>> loaded = load_model("resnet18", "random")
    >>> found = class_activation_map(loaded, torch.rand(1, 3, 224, 224), "gradcam", 3)
    >>> tuple(found.map.shape), found.class_index, found.layer.name
    ((7, 7), 3, 'layer4')
    """
    method = vocab.option(vocab.CamMethod, method, "method")
    info = resolve_layer(loaded, layer)
    masking = method in MASKING_METHODS
    if masking and info.shape[0] > MAX_SCORECAM_CHANNELS:
        raise InvalidOptionError(
            f"{method.label} masks the input once per channel, and {info.name} has {info.shape[0]} channels "
            f"(at most {MAX_SCORECAM_CHANNELS} here). Pick a layer with fewer channels or another method."
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidOptionError(f"The Score-CAM batch must be a whole number of at least 1, not {quoted(batch)}.")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise InvalidOptionError(f"The number of samples must be a whole number of at least 1, not {quoted(samples)}.")
    model, lock = (own_copy(loaded), nullcontext()) if masking else (loaded.model, loaded.lock)
    module = dict(model.named_modules())[info.name]
    no_graph_before = masking or graph_from_layer(info)
    graph_starts = not masking and graph_from_layer(info)
    noisy = torch.random.fork_rng(devices=[]) if method in CAM_SAMPLES else nullcontext()
    with lock, eval_mode(model), interruptible(model), gradients_on(), _graph_starts_at(module, graph_starts), noisy:
        if method in CAM_SAMPLES:
            torch.manual_seed(NOISE_SEED)  # inside fork_rng: the caller's generator is left as it was
        inputs = x if no_graph_before else _input_with_grad(x)
        with _torchcam_extractor(method, model, info.name, tuple(x.shape[1:]), _to_nchw(info), batch, samples) as extractor, \
                _fresh_output(module, info):
            with torch.no_grad() if no_graph_before else nullcontext():
                scores = model(inputs)
            if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
                raise CnnvizError(f"{loaded.spec.display} does not output class scores, so there is no class to explain.")
            n = scores.shape[1]
            top = int(scores[0].argmax())
            chosen = top if target_class is None else int(target_class)
            if not 0 <= chosen < n:
                raise InvalidOptionError(f"Class index {chosen} is out of range: {loaded.spec.display} has classes 0 to {n - 1}.")
            probability = float(torch.softmax(scores[0].detach().float(), 0)[chosen])
            cams = extractor(chosen, scores if not masking and method != "smoothgradcampp" else None, normalized=False)
    cam = cams[0][0].detach().float().cpu()
    logits = scores.detach().float().cpu()
    return ClassMap(torch.nan_to_num(cam).clamp_min(0), chosen, probability, top, info, method, logits)


@_outside_inference_mode
def legrad(loaded: LoadedModel, x: torch.Tensor, target_class: int | None = None) -> TokenMap:
    """LeGrad (Bousselham et al. 2024, torchcam's): per block of the last :data:`LEGRAD_BLOCKS`, the
    positive gradient of that block's own class score (the head applied to its tokens) with respect to its
    attention, averaged over heads and queries, then over the blocks; on the patch grid. torchcam's LeGrad
    reads torchvision's ``VisionTransformer`` only.

    Raises:
        InvalidOptionError: not a torchvision ViT (the sentence says what to use), a class index outside
            the model's outputs.
    """
    from torchcam.methods import LeGrad

    layout = vit_layout(loaded)
    if layout.kind != "torchvision":
        raise InvalidOptionError(f"LeGrad (torchcam's) reads torchvision's VisionTransformer (vit_b_16, …) only; for "
                                 f"{loaded.spec.display} use attention rollout or gradient-weighted rollout.")
    model = loaded.model
    blocks = [name.rsplit(".", 1)[0] for name in layout.attention][-LEGRAD_BLOCKS:]
    with loaded.lock, eval_mode(model), interruptible(model), gradients_on():
        with LeGrad(model, blocks, prefix_tokens=layout.prefix, grid_shape=layout.grid) as extractor:
            scores = model(x)
            chosen, top, probability = class_scores(loaded, scores, target_class)
            cam = extractor(chosen, normalized=False)[0][0]
    return TokenMap(torch.nan_to_num(cam.detach().float().cpu()), chosen, probability, top, "legrad",
                    scores.detach().float().cpu(), layout)


def upsampled(cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``Tensor[h,w]`` → ``Tensor[height,width]``, bilinear, pixel centres aligned."""
    return F.interpolate(cam[None, None], (height, width), mode="bilinear", align_corners=False)[0, 0]


@dataclass(frozen=True)
class Projection:
    """A channel's unit projected back to pixel space."""

    image: torch.Tensor  # Tensor[3,H,W] float32: the gradient-like signal at the input (signed)
    layer: LayerInfo
    channel: int
    position: tuple[int, int]  # (row, column) of the projected unit in the layer's map
    activation: float  # the unit's activation
    method: str  # one of PROJECTIONS
    relu_modules: int  # how many nn.ReLU modules the method could change (0: it is the plain gradient)
    silent: bool = False  # the channel is zero everywhere for this input: no unit of it fires
    activations: tuple[str, ...] = ()  # the activation modules the model does use (e.g. ("ReLU6",)), by class name


def _unit_index(info: LayerInfo, channel: int, row: int, col: int) -> tuple[int, ...]:
    """Index of unit (channel, row, col) in the layer's raw output, batch dimension excluded."""
    if info.layout == "NHWC":
        return (row, col, channel)
    if info.layout == "tokens":
        return (info.prefix + row * info.shape[2] + col, channel)
    return (channel, row, col)


def _channel_map(loaded: LoadedModel, x: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """The layer's ``Tensor[C,H,W]`` for ``x`` (one pass, under the caller's lock)."""
    found: list[torch.Tensor] = []
    with torch.no_grad(), forward_hooks(loaded.model, [info.name], lambda _n, _i, out: found.append(info.to_chw(out).clone())):
        loaded.model(x)
    return found[0]


@_outside_inference_mode
def project(
    loaded: LoadedModel,
    x: torch.Tensor,
    layer: LayerInfo | str | None,
    channel: int,
    method: str = "guided_backprop",
    position: tuple[int, int] | None = None,
) -> Projection:
    """Project one unit of ``channel`` at ``layer`` back to the input (Zeiler & Fergus 2014): captum's
    ``NeuronGuidedBackprop`` or ``NeuronDeconvolution``. ``position`` (row, column) in the layer's
    map; None: where the channel is most active for ``x``.

    Raises:
        InvalidOptionError: unknown method, channel or position outside the layer.
        UnknownLayerError: no listed layer of that name.

    >>> from cnnviz.loading import load_model
    >>> loaded = load_model("resnet18", "random")
    >>> found = project(loaded, torch.rand(1, 3, 224, 224), "layer2", 5)
    >>> tuple(found.image.shape), found.channel
    ((3, 224, 224), 5)
    """
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    method = vocab.option(vocab.Projection, method, "method")
    info = resolve_layer(loaded, layer)
    c, h, w = info.shape
    if not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel < c:
        raise InvalidOptionError(f"Channel {quoted(channel)} is out of range: {info.name} has channels 0 to {c - 1}.")
    model = loaded.model
    module = dict(model.named_modules())[info.name]
    relus = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
    used = tuple(sorted({type(m).__name__ for m in model.modules() if _is_activation(m)}))
    with loaded.lock, eval_mode(model), interruptible(model):
        maps = _channel_map(loaded, x, info)
        if position is None:
            flat = int(maps[channel].flatten().argmax())
            position = (flat // maps.shape[2], flat % maps.shape[2])
        row, col = (int(v) for v in position)
        if not (0 <= row < maps.shape[1] and 0 <= col < maps.shape[2]):
            raise InvalidOptionError(f"Position {quoted(position)} is outside {info.name}'s {maps.shape[1]}×{maps.shape[2]} map.")
        kind = NeuronGuidedBackprop if method == "guided_backprop" else NeuronDeconvolution
        with relus_out_of_place(model), gradients_on(), _fresh_output(module, info):
            inputs = _input_with_grad(x)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
                signal = kind(model, module).attribute(inputs, _unit_index(info, channel, row, col))
    return Projection(signal[0].detach().float().cpu(), info, channel, (row, col),
                      float(maps[channel, row, col]), method, relus, not bool(maps[channel].any()), used)


_NOT_ACTIVATIONS = frozenset({"Softmax", "Softmax2d", "LogSoftmax", "Softmin", "MultiheadAttention"})


def _is_activation(module: torch.nn.Module) -> bool:
    """Whether ``module`` is an element-wise activation (torch's ``nn.ReLU6``, ``nn.SiLU``, … or timm's own)."""
    where = type(module).__module__
    return (where == "torch.nn.modules.activation" or where.startswith("timm.layers.activations")) and \
        type(module).__name__ not in _NOT_ACTIVATIONS


def projection_note(found: Projection) -> str:
    """A sentence on what the projection shows when it is not a unit's usual projection: a channel
    silent on this input (nothing to take back), or a model without ``nn.ReLU`` modules (then it is the
    plain gradient; the sentence names the activation the model does use)."""
    name = PROJECTION_NAMES[found.method]
    if found.silent:
        return (f"Channel {found.channel} is silent here: it is zero everywhere on this photo, so none of its units "
                "fires and there is nothing to take back to the pixels (the pictures are flat). Pick a channel that is "
                "active on this photo (Feature maps' statistics give each channel's maximum), or another photo.")
    if not found.relu_modules:
        uses = (f"its activations are {', '.join(found.activations)}, not nn.ReLU" if found.activations
                else "it has no activation modules")
        return (f"{name.capitalize()} changes the model's nn.ReLU modules on the way back, and {uses}; what is shown "
                "is the plain gradient of the unit with respect to the pixels.")
    return ""


@_outside_inference_mode
def guided_gradcam(loaded: LoadedModel, x: torch.Tensor, target_class: int | None = None,
                   layer: LayerInfo | str | None = None) -> tuple[torch.Tensor, ClassMap]:
    """Guided Grad-CAM (Selvaraju et al. 2017): the guided-backpropagation gradient of the class score
    times the Grad-CAM map upsampled to the input. Returns (``Tensor[3,H,W]``, the Grad-CAM)."""
    from captum.attr import GuidedBackprop

    cam = class_activation_map(loaded, x, "gradcam", target_class, layer)
    model = loaded.model
    with loaded.lock, eval_mode(model), interruptible(model), relus_out_of_place(model), gradients_on():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            signal = GuidedBackprop(model).attribute(_input_with_grad(x), target=cam.class_index)
    weight = upsampled(cam.map, x.shape[-2], x.shape[-1])
    return signal[0].detach().float().cpu() * weight, cam


def class_index(loaded: LoadedModel, target: str | int | None) -> int | None:
    """A class named by index (``"281"``, 281) or label (any case) as an index; None or "" → None
    (the top class).

    Raises:
        InvalidOptionError: an unknown label (with close matches), or an index for a model without labels
            that is not a whole number.

    >>> from cnnviz.loading import load_model
    >>> class_index(load_model("resnet18", "random"), "Tabby"), class_index(load_model("resnet18", "random"), " 7 ")
    (281, 7)
    """
    if target is None or (isinstance(target, str) and not target.strip()):
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    labels = loaded.categories or ()
    lowered = {label.lower(): i for i, label in reversed(list(enumerate(labels)))}
    if text.lower() in lowered:
        return lowered[text.lower()]
    if not labels:
        raise InvalidOptionError(f"{loaded.spec.display} has no class labels; give the class as an index.")
    hint = did_you_mean(text, labels) or " Give a label from the list or a class index."
    raise InvalidOptionError(f"{loaded.spec.display} has no class {quoted(text)}.{hint}")


def label_of(loaded: LoadedModel, index: int) -> str:
    """Class ``index``'s label, or ``"class N"`` for a model without labels.

    >>> from cnnviz.loading import load_model
    >>> label_of(load_model("resnet18", "random"), 967), label_of(load_model("resnet18", "random"), 5000)
    ('espresso', 'class 5000')
    """
    labels = loaded.categories or ()
    return labels[index] if 0 <= index < len(labels) else f"class {index}"


def check_finite(signal: np.ndarray, loaded: LoadedModel, what: str) -> np.ndarray:
    """``signal`` when every value is finite; else the sentence (weights so large that float32 overflows)."""
    if not np.isfinite(signal).all():
        raise CnnvizError(
            f"The {what} overflowed: {loaded.spec.display}'s weights make values too large for 32-bit floats on "
            "the way back to the pixels, so there is nothing to draw. Pick an earlier layer, or check the weights."
        )
    return signal
