"""Attribution: why the model decided (class activation maps, Guided Grad-CAM), what a channel responds to
in this photo (Zeiler–Fergus projections) and in general (feature visualisation)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# The room. `cnnviz.attribution` is the public view function defined below: while this module loads, the package
# has no such attribute yet, so this import finds the module (comparison.py imports from it by name instead).
from .. import attribution as methods
from .. import budget, cache, featurevis, layers, preprocess, render, rollout, vocab
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome

REQUEST_SECONDS = budget.REQUEST_SECONDS  # one request's deadline (the UI stops work past it)
CAM_METHODS = methods.CAM_METHODS
CAM_NAMES = methods.CAM_NAMES
ATTENTION_METHODS = vocab.values(vocab.AttentionMethod)  # a vision transformer's own: no target layer
METHOD_NAMES = {**CAM_NAMES, **{m.value: m.label[0].upper() + m.label[1:] for m in vocab.AttentionMethod}}
MASKING_METHODS = methods.MASKING_METHODS  # one masked copy of the photo per channel (and sample): slow, costed first
PROJECTIONS = methods.PROJECTIONS
FEATUREVIS_MAX_STEPS = featurevis.MAX_STEPS


@dataclass(frozen=True)
class CamCost:
    """What a class activation map will take before it starts: ``passes`` forward passes (Score-CAM: two,
    then one per batch of masked copies), and the budget's estimate of its time and memory."""

    method: str
    layer: layers.LayerInfo
    passes: int
    cost: budget.Cost

    def describe(self) -> str:
        """``"Score-CAM at `bn2`: 1280 channels, one masked copy of the photo each, in 42 passes — ≈ 41 s,
        ≈ 310 MB on this server"``; SS-CAM and IS-CAM say their samples or steps per channel too."""
        rounds = budget.masked_rounds(self.method)
        per = {"sscam": f" × {rounds} noisy samples", "iscam": f" × {rounds} steps"}.get(self.method, "")
        what = f"{self.layer.shape[0]} channels{per}, one masked copy of the photo each, in {self.passes} passes" \
            if self.method in MASKING_METHODS else f"{self.passes} pass{'es' if self.passes != 1 else ''}"
        return f"{CAM_NAMES[self.method]} at `{self.layer.name}`: {what} — {budget.describe(self.cost)} on this server"


def attribution_cost(model: str | LoadedModel, method: str = "gradcam", layer: str = "",
                     weights: str = "pretrained") -> CamCost:
    """What :func:`attribution` would take for ``method`` at ``layer`` (the photo does not change it),
    refused as :func:`attribution` refuses it when it would not fit the request's budget.

    >>> attribution_cost("resnet18", "scorecam", "layer1.0.conv1", "random").passes  # 2, then 64 channels 32 at a time
    4
    """
    method = vocab.option(vocab.CamMethod, method, "method")
    loaded = load_model(model, weights)
    info = methods.resolve_layer(loaded, layer or None)
    batch = budget.check_cam(loaded, info, method)
    if method in MASKING_METHODS:
        passes = budget.masked_passes(method, info.shape[0], batch)
    else:
        passes = 1 + methods.CAM_SAMPLES.get(method, 0)  # Smooth Grad-CAM++: one more per noisy copy
    return CamCost(str(method), info, passes, budget.cam_cost(loaded, info, method, batch))


@dataclass(frozen=True)
class AttributionView:
    overlay: np.ndarray  # uint8[H,W,3]: the map over the picture the model saw, a colour bar below
    map: np.ndarray  # float32[h,w]: the raw map, at the target layer's resolution (attention methods: the patch grid)
    class_index: int  # the class explained
    label: str  # its label ("class N" for a model without labels)
    probability: float  # the model's probability for it
    top_label: str  # the model's own top class
    layer: layers.LayerInfo | None  # the target layer (None for the attention methods: they read every block)
    method: str
    weights: WeightsOutcome

    @property
    def raw(self) -> np.ndarray:
        """The raw map (``float32[h,w]``, not scaled): the target layer's grid, or a ViT's patch grid."""
        return self.map


def default_method(loaded: LoadedModel) -> str:
    """The method a page starts with: attention rollout for a vision transformer :mod:`cnnviz.rollout`
    reads (a CAM at a token layer may be all zero there: the class is read from the class token),
    Grad-CAM otherwise."""
    return "rollout" if rollout.is_vit(loaded) else "gradcam"


def attribution(
    model: str | LoadedModel, image, method: str = "", target: str | int = "", layer: str = "",
    weights: str = "pretrained", opacity: float = 0.5,
) -> AttributionView:
    """Why the model puts ``image`` in class ``target`` (a class index or label; empty: the top class),
    drawn over the picture the model saw: a class activation map at ``layer`` (empty: the last map before
    pooling) — Grad-CAM, Grad-CAM++, LayerCAM, XGrad-CAM, Smooth Grad-CAM++, Score-CAM, SS-CAM, IS-CAM —
    or, for a vision transformer, a map read from its attention on the patch grid (``layer`` unused):
    ``"rollout"`` (attention rollout), ``"chefer"`` (gradient-weighted rollout), ``"legrad"`` (LeGrad,
    torchvision ViTs). ``method`` empty: :func:`default_method` (rollout for a ViT, Grad-CAM otherwise).

    Raises:
        InvalidOptionError: an unknown method or class, an attention method for a model that is not a
            vision transformer these methods read, or a map that would not fit one request's budget
            (:mod:`cnnviz.budget`): the sentence says what would (a layer with fewer channels for the
            masking methods, a later layer, Grad-CAM). Their batches are made smaller to fit.

    >>> view = attribution("timm/tf_efficientnet_lite0", "examples/coffee.png")
    >>> view.label, view.map.shape, view.overlay.shape[1]
    ('espresso', (7, 7), 224)
    >>> attribution("timm/vit_tiny_patch16_224", "examples/coffee.png", weights="random").raw.shape
    (14, 14)
    """
    loaded = load_model(model, weights)
    method = vocab.attribution_method(method or default_method(loaded))
    opacity = vocab.unit_interval(opacity, "Opacity")
    x = preprocess.model_input(loaded, image).x
    wanted = methods.class_index(loaded, target)
    if isinstance(method, vocab.AttentionMethod):
        layout = rollout.vit_layout(loaded)
        budget.check_attention(loaded, layout, method)  # before any pass
        token = methods.legrad(loaded, x, wanted) if method == "legrad" else rollout.attention_map(loaded, x, method, wanted)
        raw = token.map.numpy().astype(np.float32)
        picture = render.cam_picture(preprocess.seen_image(loaded, x), raw, opacity)
        return AttributionView(picture, raw, token.class_index, methods.label_of(loaded, token.class_index),
                               token.probability, methods.label_of(loaded, token.top_class), None, str(method), loaded.weights)
    info = methods.resolve_layer(loaded, layer or None)
    batch = budget.check_cam(loaded, info, method)  # before any pass: refuses what would not fit, sizes the masking batches
    found = methods.class_activation_map(loaded, x, method, wanted, info, batch)
    raw = found.map.numpy().astype(np.float32)
    picture = render.cam_picture(preprocess.seen_image(loaded, x), raw, opacity)
    return AttributionView(picture, raw, found.class_index, methods.label_of(loaded, found.class_index),
                           found.probability, methods.label_of(loaded, found.top_class), found.layer,
                           str(method), loaded.weights)


@dataclass(frozen=True)
class ProjectionView:
    image: np.ndarray  # uint8[H,W*2+gap,3]: the projection beside the picture crop it covers
    projection: np.ndarray  # float32[3,H,W]: the signed signal at the input
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in the picture where the projection is not ~zero
    layer: layers.LayerInfo
    channel: int
    position: tuple[int, int]  # (row, column) of the projected unit in the layer's map
    activation: float
    method: str
    note: str  # "" or why the projection is not a unit's usual one (a silent channel, the plain gradient)
    weights: WeightsOutcome
    silent: bool = False  # the channel is zero everywhere on this photo: nothing was projected


def projection(
    model: str | LoadedModel, image, layer: str, channel: int, method: str = "guided_backprop",
    weights: str = "pretrained",
) -> ProjectionView:
    """Zeiler–Fergus projection: the strongest unit of ``channel`` at ``layer`` for ``image`` taken
    back to pixel space (guided backpropagation or deconvnet), beside the part of the picture it covers.

    >>> projection("resnet18", "examples/coffee.png", "layer2", 3, weights="random").projection.shape
    (3, 224, 224)
    """
    method = vocab.option(vocab.Projection, method, "method")
    loaded = load_model(model, weights)
    x = preprocess.model_input(loaded, image).x
    info = methods.resolve_layer(loaded, layer or None)
    budget.check_projection(loaded, info, method.label)
    found = methods.project(loaded, x, info, channel, method)
    signal = methods.check_finite(found.image.numpy().astype(np.float32), loaded, "projection")
    picture = preprocess.seen_image(loaded, x)
    strength = np.abs(signal).max(axis=0)
    peak = float(strength.max())
    rows, cols = np.nonzero(strength > 0.01 * peak) if peak > 0 else (np.array([0]), np.array([0]))
    box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    side = render.side_by_side(render.signed_picture(signal), render.crop_box(picture, box))
    return ProjectionView(side, signal, box, found.layer, found.channel, found.position, found.activation,
                          str(method), methods.projection_note(found), loaded.weights, found.silent)


@dataclass(frozen=True)
class GuidedGradCamView:
    image: np.ndarray  # uint8[H,W*2+gap,3]: guided Grad-CAM beside the picture the model saw
    signal: np.ndarray  # float32[3,H,W]: guided backpropagation of the class score × the upsampled Grad-CAM
    class_index: int
    label: str
    probability: float
    layer: layers.LayerInfo  # Grad-CAM's target layer
    weights: WeightsOutcome


def guided_gradcam(
    model: str | LoadedModel, image, target: str | int = "", layer: str = "", weights: str = "pretrained",
) -> GuidedGradCamView:
    """Guided Grad-CAM (Selvaraju et al., 2017) of ``image`` for ``target`` (a class index or label; empty:
    the top class): the pixels that raise the class score (guided backpropagation), kept where the class's
    Grad-CAM at ``layer`` (empty: the last map before pooling) is on.

    >>> view = guided_gradcam("timm/tf_efficientnet_lite0", "examples/coffee.png")
    >>> view.label, view.signal.shape
    ('espresso', (3, 224, 224))
    """
    loaded = load_model(model, weights)
    x = preprocess.model_input(loaded, image).x
    wanted = methods.class_index(loaded, target)
    info = methods.resolve_layer(loaded, layer or None)
    budget.check_guided_gradcam(loaded, info)
    signal, cam = methods.guided_gradcam(loaded, x, wanted, info)
    values = methods.check_finite(signal.numpy().astype(np.float32), loaded, "Guided Grad-CAM")
    side = render.side_by_side(render.signed_picture(values), preprocess.seen_image(loaded, x))
    return GuidedGradCamView(side, values, cam.class_index, methods.label_of(loaded, cam.class_index),
                             cam.probability, cam.layer, loaded.weights)


@dataclass(frozen=True)
class ChannelVisualizationView:
    """An image generated to excite one channel of a layer (activation maximisation)."""

    layer: layers.LayerInfo
    channel: int
    image: np.ndarray  # uint8[H,W,3]: the generated image, at the working size
    activation: float  # the channel's mean for that image (the uint8 image, one eval pass, no transformation)
    steps: int
    seed: int
    size: tuple[int, int]  # (height, width) it was generated at
    weights: WeightsOutcome


def channel_visualization(
    model: str | LoadedModel, layer: str | None, channel: int, steps: int = 256, weights: str = "pretrained",
    seed: int = 0, progress=None,
) -> ChannelVisualizationView:
    """An image that ``channel`` of ``layer`` responds to strongly, generated by gradient ascent from
    noise (:mod:`cnnviz.featurevis`: Fourier-space, colour-decorrelated image, random jitter, scale and
    rotation each step), with the channel's mean activation for it. ``progress(step, steps)`` is called
    after each step. Cached per (model, weights, layer, channel, steps, seed), 4 MB per model.

    >>> view = channel_visualization("resnet18", "layer1", 3, steps=2, weights="random")
    >>> view.image.shape, view.image.dtype
    ((128, 128, 3), dtype('uint8'))

    Raises:
        InvalidOptionError: a channel the layer does not have, steps outside 1–2048, a seed that is not
            a whole number from 0 to 2**32 − 1, or more steps than fit one request's time budget
            (:mod:`cnnviz.budget`; the sentence says how many fit).
        UnknownLayerError: the model has no such layer (the sentence suggests close names).
    """
    loaded = load_model(model, weights)
    info = layers.get_layer(loaded, layer)
    count = info.shape[0]
    c = vocab.whole(channel, 0, count - 1, "Channel", f" ({info.name} has {count} channels)")
    steps = vocab.whole(steps, 1, featurevis.MAX_STEPS, "Steps")
    seed = vocab.whole(seed, 0, 2**32 - 1, "Seed")
    store = loaded.memo("featurevis.cache", lambda: cache.Store("feature visualisations", featurevis.KEEP_BYTES))
    key = (info.name, c, steps, seed)
    hit = store.get(key)
    if hit is not None:
        return hit
    mean_std = preprocess.normalisation(loaded.transform)
    size = featurevis.working_size(loaded, info, mean_std)
    budget.check_featurevis(loaded, info, c, size, steps)  # before the first step: the most steps that fit, if not these
    made = featurevis.visualize_channel(loaded.model, info, c, size, mean_std, steps, seed, progress, loaded.lock)
    final = torch.from_numpy(made.image).to(loaded.device).permute(2, 0, 1)[None].float() / 255
    activation = featurevis.channel_activation(loaded.model, info, c, featurevis.normalise(final, mean_std), loaded.lock)
    return store.put(key, ChannelVisualizationView(info, c, made.image, activation, steps, seed, size, loaded.weights))


@dataclass(frozen=True)
class AttributionChoices:
    layers: tuple[layers.LayerInfo, ...]  # every listed layer (any can be the target)
    default_layer: str  # the last map before pooling
    labels: tuple[str, ...]  # the model's class labels (empty when it has none)
    default_method: str = "gradcam"  # "rollout" for a vision transformer (:func:`default_method`)
    attention: tuple[str, ...] = ()  # the attention methods that apply (rollout, chefer; legrad for torchvision ViTs)


def attribution_choices(model: str | LoadedModel, weights: str = "pretrained") -> AttributionChoices:
    """What the Attribution tab offers for ``model``: its layers, the default target layer, its labels,
    the default method and the attention methods that apply.

    >>> found = attribution_choices("resnet18", "random")
    >>> found.default_layer, found.default_method, found.attention
    ('layer4', 'gradcam', ())
    """
    loaded = load_model(model, weights)
    vit = rollout.is_vit(loaded)
    attention = (*rollout.ROLLOUT_METHODS, *(("legrad",) if vit and rollout.vit_layout(loaded).kind == "torchvision" else ())) \
        if vit else ()
    return AttributionChoices(layers.list_layers(loaded), methods.default_layer(loaded).name,
                              tuple(loaded.categories or ()), default_method(loaded), attention)
