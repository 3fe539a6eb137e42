"""The Attribution tab: why the model decided (class activation maps over the picture it saw, with
the random-weights sanity check one click away) and what a channel responds to in this photo
(Zeiler–Fergus projections).

Public endpoints: ``/attribution``, ``/projection``, ``/guided_gradcam``, ``/explanation_quality``.
"""
from __future__ import annotations

import io
import time
from contextlib import nullcontext
from dataclasses import dataclass

import gradio as gr
import numpy as np
import pandas as pd

from .. import cancel, explore
from ..errors import CnnvizError, InvalidImageError, quoted
from .common import (
    HEAVY,
    OUTPUTS,
    PROJECTION_CHOICES,
    WORK,
    PageState,
    Photo,
    Refresh,
    enqueued_at,
    in_page,
    markdown_text,
    photo_box,
    projection_outputs,
    stop_reason,
    user_errors,
    warn,
    weights_used,
)

METHOD_CHOICES = [
    ("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcampp"), ("LayerCAM", "layercam"), ("Score-CAM (slow)", "scorecam"),
    ("XGrad-CAM", "xgradcam"), ("Smooth Grad-CAM++", "smoothgradcampp"), ("SS-CAM (slower)", "sscam"), ("IS-CAM (slow)", "iscam"),
    ("Attention rollout (ViT)", "rollout"), ("Gradient-weighted rollout (ViT)", "chefer"), ("LeGrad (torchvision ViT)", "legrad"),
]
NO_IMAGE = "Upload a photo, paste one, or pick an example to see which parts of it the model's decision rests on."
EXPLAINED = {
    "gradcam": ("Grad-CAM weights each map of the layer by how much the class score rises when that map rises "
                "(its average gradient) and keeps the positive sum."),
    "gradcampp": ("Grad-CAM++ weights each map like Grad-CAM but counts only the places where a rise helps the class, "
                  "so several objects of one class all light up."),
    "layercam": ("LayerCAM weights every position of every map by its own positive gradient, which keeps finer detail, "
                 "especially at earlier layers."),
    "scorecam": ("Score-CAM uses no gradients: it masks the picture with each map in turn and weights the map by how much "
                 "that masked picture alone raises the class score."),
    "xgradcam": ("XGrad-CAM weights each map by its gradient averaged where the map is active (each position counted by "
                 "the map's own value), which keeps the map faithful to how the score changes with the layer."),
    "smoothgradcampp": ("Smooth Grad-CAM++ is Grad-CAM++ with its gradients averaged over a few noisy copies of the picture, "
                        "so the map depends less on one picture's noise."),
    "sscam": ("SS-CAM is Score-CAM with each mask made noisy several times and the scores averaged: steadier maps, "
              "at one pass per channel and sample."),
    "iscam": ("IS-CAM is Score-CAM with each mask faded in over several steps and the scores added up (integrated): "
              "one pass per channel and step."),
    "rollout": ("Attention rollout follows the attention from the class token back to the patches through every block "
                "(each block's attention averaged over its heads, the skip connection added, multiplied block by block); "
                "it ignores the class: it shows where the class token looks."),
    "chefer": ("Gradient-weighted rollout (Chefer et al.) keeps, in each block, only the attention whose rise raises this "
               "class's score (attention × its gradient, positive part, averaged over heads) and adds it up through the "
               "blocks: a map of this class, not of where the model looks in general."),
    "legrad": ("LeGrad asks, for each of the last blocks, how the class score read at that block changes with its attention "
               "(positive gradients, averaged over heads and over those blocks)."),
}
SANITY = (
    "**Sanity check (Adebayo et al., 2018):** the same method on the same picture with *random* weights. A map "
    "that explains the trained model should look different from this one; if the two look alike, the map shows "
    "the picture's edges and the layer's shape, not what the model learned."
)


def _cam(model, image, method, target, layer, weights, opacity):
    """(overlay file, .npy file, {label: probability}, caption)."""
    return _cam_outputs(model, method, explore.attribution(model, image, method, target or "", layer or "", weights, float(opacity)))


def _cam_outputs(model, method, view):
    """A map's (overlay file, .npy file, {label: probability}, caption)."""
    h, w = view.map.shape
    buffer = io.BytesIO()
    np.save(buffer, view.map, allow_pickle=False)
    name = f"{model}-{view.method}-{view.class_index}"
    also = "" if view.label == view.top_label else f" (the model's own top class is **{markdown_text(view.top_label)}**)"
    if view.layer is None:  # an attention method: every block, the patch grid
        where = (f"read from every block's attention, on the {h}×{w} patch grid (upsampled to the picture the model saw; "
                 "bright: the patches the class rests on; the target layer is not used)")
        empty = (" The map is zero everywhere: the class score does not change with the attention here (a random "
                 "classifier head that is all zero, as torchvision's is before training, gives no gradient).") \
            if not view.map.any() else ""
    else:
        where = (f"at `{view.layer.name}` ({h}×{w}, upsampled to the picture the model saw; bright: the parts that raise "
                 "this class's score)")
        empty = (" The map is zero everywhere: the class score does not rise with any of this layer's maps here "
                 "(in a vision transformer the class is read from the class token; pick an earlier layer, or attention "
                 "rollout).") if not view.map.any() else ""
    caption = (
        f"**{explore.METHOD_NAMES[view.method]}** for **{markdown_text(view.label)}** (class {view.class_index}, probability "
        f"{view.probability:.1%}){also}, {where}.{empty} {EXPLAINED[view.method]}\n\n{weights_used(view.weights)}"
    )
    return (
        OUTPUTS.write(f"{name}-overlay.jpg", explore.encode(view.overlay, "jpeg")),
        OUTPUTS.write(f"{name}-map.npy", buffer.getvalue()),
        {view.label: view.probability},
        caption,
    )


@user_errors
def attribution(model: str, image: str, method: str = "gradcam", target: str = "", layer: str = "",
                weights: str = "pretrained", opacity: float = 0.5):
    """A class activation map over the picture the model saw: which parts of the image raise the score of a class.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        method: "gradcam", "gradcampp" (Grad-CAM++), "layercam", "xgradcam" (XGrad-CAM), "smoothgradcampp" (Smooth Grad-CAM++),
            "scorecam" (Score-CAM, slow), "sscam" (SS-CAM, slower), "iscam" (IS-CAM, slow); for a vision transformer also
            "rollout" (attention rollout), "chefer" (gradient-weighted rollout) and, for torchvision vit_*, "legrad" (LeGrad),
            which read every block's attention (layer unused; the page opens a vision transformer on rollout).
        target: the class to explain, as an index ("281") or a label ("tabby"); empty: the model's top class.
        layer: qualified module name of the target layer; empty: the last map before the network pools it.
        weights: "pretrained" or "random" (random is the sanity check: a map that explains must differ from it).
        opacity: how strongly the map covers the picture, from 0 (picture only) to 1 (map only).
    """
    return _cam(model, image, method, target, layer, weights, opacity)


@user_errors
def projection(model: str, image: str, layer: str, channel: float, method: str = "guided_backprop",
               weights: str = "pretrained"):
    """Zeiler–Fergus projection: the strongest unit of a channel taken back to pixel space, beside the part of the picture it covers.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        layer: qualified module name (e.g. "layer3.1.conv2"); empty: the last map before the network pools it.
        channel: the channel index, from 0 to the layer's channel count minus one.
        method: "guided_backprop" (guided backpropagation) or "deconvnet".
        weights: "pretrained" or "random".
    """
    return projection_outputs(model, image, layer, channel, method, weights)


@user_errors
def guided_gradcam(model: str, image: str, target: str = "", layer: str = "", weights: str = "pretrained"):
    """Guided Grad-CAM: the pixels that raise a class's score (guided backpropagation), kept where its Grad-CAM is on.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        target: the class to explain, as an index ("281") or a label ("tabby"); empty: the model's top class.
        layer: qualified module name of Grad-CAM's target layer; empty: the last map before the network pools it.
        weights: "pretrained" or "random".
    """
    view = explore.guided_gradcam(model, image, target or "", layer or "", weights)
    caption = (
        f"**Guided Grad-CAM** for **{markdown_text(view.label)}** (class {view.class_index}, probability {view.probability:.1%}), "
        f"Grad-CAM at `{view.layer.name}`: left, the pixels whose change raises this class's score (guided "
        f"backpropagation; grey: no effect), kept where the class's Grad-CAM is on; right, the picture the model "
        f"saw.\n\n{weights_used(view.weights)}"
    )
    return OUTPUTS.write(f"{model}-guided-gradcam-{view.class_index}.png", explore.encode(view.image, "png")), caption


@user_errors
def show_guided(model, image, target, layer, weights):
    if not image:
        return None, NO_IMAGE
    return guided_gradcam(model, image, target, layer, weights)


QUALITY_CHOICES = [(explore.QUALITY_NAMES[m] + (" (slow)" if m in explore.MASKING_METHODS else ""), m) for m in explore.QUALITY_METHODS]
QUALITY_DEFAULTS = (f"{', '.join(explore.QUALITY_NAMES[m] for m in explore.DEFAULT_QUALITY_METHODS)}; for a vision transformer "
                    "its attention methods")
QUALITY_COLUMNS = ["rank", "method", "deletion AUC ↓", "insertion AUC ↑", "Average Drop ↓", "Increase in Confidence ↑"]
QUALITY_TABLE_LABEL = "The methods ranked on this photo by insertion − deletion (↓ lower is better, ↑ higher is better)"
QUALITY_INTRO = (
    "**Which map to trust:** each method's map is tested on this photo by perturbing the picture in the order the map "
    "ranks its pixels (Petsiuk et al. 2018; Chattopadhay et al. 2018). **Deletion** removes the top-ranked pixels "
    "first (set to the average colour) and watches the class's probability: a map that found what matters makes it "
    "fall fast (a low area under the curve). **Insertion** starts from a blank picture and puts the top-ranked pixels "
    "back: it should rise fast (a high area). **Average Drop** is how much the probability falls when the picture is "
    "multiplied by the map (lower is better); **Increase in Confidence** is 1 when that raises it. One photo is a small "
    "sample: these rank the maps on this photo, not the methods in general."
)


def _quality_outputs(view) -> tuple:
    """(ranking table, deletion curves, insertion curves, caption) of a :class:`QualityView`."""
    rows = []
    for rank, m in enumerate(view.ranking, 1):
        s = view.scores[m]
        values = [None] * 4 if s.flat else [round(s.deletion, 4), round(s.insertion, 4), round(s.average_drop, 4),
                                            int(s.increase_in_confidence)]
        rows.append([rank, s.name + (" (flat map: not scored)" if s.flat else ""), *values])
    table = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    frames = {"deletion": [], "insertion": []}
    for m in view.ranking:
        s = view.scores[m]
        if s.flat:
            continue
        for curve, values in (("deletion", s.deletion_curve), ("insertion", s.insertion_curve)):
            frames[curve].append(pd.DataFrame({"fraction of pixels": s.fractions.astype(float),
                                               "probability": values.astype(float), "method": s.name}))
    curves = [pd.concat(frames[c], ignore_index=True) if frames[c] else
              pd.DataFrame(columns=["fraction of pixels", "probability", "method"]) for c in ("deletion", "insertion")]
    best = view.scores[view.ranking[0]]
    lead = (f"Best on this photo: **{best.name}** (insertion − deletion = {best.difference:.3f}; the table is ranked "
            "by it)." if not best.flat else "Every map was flat: nothing to rank.")
    caption = (
        f"**{len(view.scores)} map{'s' if len(view.scores) != 1 else ''}** explaining **{markdown_text(view.label)}** "
        f"(class {view.class_index}, probability {view.probability:.1%}) "
        f"{f'at `{view.layer.name}`' if view.layer else 'from its attention'}, scored with "
        f"{view.steps} steps ({2 * view.steps - 1} perturbed pictures per curve pair, and one for Average Drop). {lead}"
        f"\n\n{weights_used(view.weights)}"
    )
    return table, curves[0], curves[1], caption


@user_errors
def explanation_quality(model: str, image: str, target: str = "", layer: str = "", weights: str = "pretrained",
                        methods: list[str] | None = None):
    """Which map to trust: deletion / insertion AUCs, Average Drop and Increase in Confidence of each method's map on this photo, ranked, with the curves.

    Args:
        model: a curated key (alexnet, resnet50, ...), any torchvision classifier name, or timm/<name>.
        image: an image uploaded to this app (the path /gradio_api/upload answers; over MCP, the URL upload_file_to_gradio returns).
        target: the class to explain, as an index ("281") or a label ("tabby"); empty: the model's top class.
        layer: qualified module name of the CAMs' target layer; empty: the last map before the network pools it.
        weights: "pretrained" or "random".
        methods: the methods to score, from "gradcam", "gradcampp", "layercam", "xgradcam", "smoothgradcampp", "scorecam", "sscam",
            "iscam" (the last three slow), "rollout", "chefer", "legrad" (vision transformers), "guided_gradcam"; empty: Grad-CAM,
            Grad-CAM++, LayerCAM and Guided Grad-CAM, or for a vision transformer its attention methods.
    """
    return _quality(model, image, target, layer, weights, methods)


def _quality(model, image, target, layer, weights, methods, progress=None):
    view = explore.explanation_quality(model, image, target=target or None, methods=methods, weights=weights, layer=layer or "",
                                       progress=progress)
    return _quality_outputs(view)


@in_page(outputs=4, caption=3)
def show_quality(model, image, target, layer, weights, methods, progress=gr.Progress()):
    """The page's scores, each stage (a method's map, then the scoring of them all) counted on the table."""
    if not image:
        return None, None, None, NO_IMAGE

    def counted(stage: int, stages: int) -> None:
        what = f"map {stage} of {stages - 1}" if stage < stages else "deleting and inserting pixels"
        progress((stage - 1, stages), desc=f"Which map to trust: {what}", unit="stages done")  # the bar: what is done

    return _quality(model, image, target, layer, weights, methods, counted)


# What each page (by session) asked of its class activation map last, and when: a run for an older
# question stops at its next module (a Score-CAM at bn2 is minutes of passes; a newer choice should not wait).
ASKED: dict[str, tuple[tuple, float]] = {}
ASKED_PAGES = 10_000  # pages remembered; the oldest go first (a forgotten page only loses this early stop)


def _question(image, method, target, layer) -> tuple:
    return (image, method, str(target or ""), layer or "")


@user_errors
def cam_asked(model, image, method, target, layer, weights, request: gr.Request = None):
    """Runs at once in the light lane whenever the page asks for a new map: remembers the question, so
    that a Score-CAM still running for an older one stops, and for Score-CAM says what it will take
    before it starts (a refusal is left to the map's own event, which says it once)."""
    session = getattr(request, "session_hash", None)
    if session:
        ASKED.pop(session, None)
        ASKED[session] = (_question(image, method, target, layer), time.monotonic())
        while len(ASKED) > ASKED_PAGES:
            ASKED.pop(next(iter(ASKED)))
    if not image or method not in explore.MASKING_METHODS:
        return gr.skip()
    try:
        cost = explore.attribution_cost(model, method, layer or "", weights)
    except CnnvizError:
        return gr.skip()
    return f"⏳ {cost.describe()}. Running now: the progress shows on the picture; any other choice stops it."


def _counting(model, method, layer, weights, progress):
    """Score-CAM's (SS-CAM's, IS-CAM's) real progress: each forward pass counted against the passes it will make."""
    if method not in explore.MASKING_METHODS or progress is None:
        return nullcontext()
    total, name = explore.attribution_cost(model, method, layer or "", weights).passes, explore.CAM_NAMES[method]

    def shown(done: int, _total: int) -> None:  # the estimate stays the total: a pass beyond it shows as the last
        progress((min(done, total), total), desc=f"{name}: pass {min(done, total)} of {total}", unit="passes")

    return cancel.count_passes(total, shown)


@in_page(outputs=4, caption=3)
def show(model, image, method, target, layer, weights, opacity, request: gr.Request = None, progress=gr.Progress()):
    """The page's class activation map (a hint before there is an image). It stops when the page has
    asked a newer question (:func:`cam_asked`); Score-CAM reports its passes as it makes them."""
    if not image:
        return None, None, None, NO_IMAGE
    session, asked, started = getattr(request, "session_hash", None), _question(image, method, target, layer), time.monotonic()
    arrived = enqueued_at() or started

    def stop() -> str | None:
        question, when = ASKED.get(session, (asked, 0.0)) if session else (asked, 0.0)
        return "superseded" if question != asked and when > arrived else stop_reason(started)

    try:
        with cancel.stop_when(stop), _counting(model, method, layer, weights, progress):
            return _cam(model, image, method, target, layer, weights, opacity)
    except InvalidImageError as e:  # the page's one photo: Feature maps says it in a toast; here, where the map goes
        return None, None, None, f"⚠️ {e}"


@user_errors
def sanity(model, image, method, target, layer, opacity, weights):
    """The same map with random weights, for the same class as the map beside it (with no class chosen:
    the class the model with the page's weights puts first, not the random network's own guess)."""
    if not image:
        return None, NO_IMAGE
    view = explore.sanity_check(model, image, method, target or "", layer or "", weights, float(opacity))
    overlay, _npy, _label, caption = _cam_outputs(model, method, view.random)
    return overlay, f"{SANITY}\n\n{sanity_numbers(view)}\n\n{caption}"


def sanity_numbers(view) -> str:
    """The sanity check's scores in a sentence, with what a high value means."""
    if view.flat:
        return ("**How alike:** one of the two maps has the same value everywhere, so there is no ranking or "
                "structure to compare.")
    same = (" The page's weights are random already, so both maps come from the same untrained network: the "
            "scores are 1 by construction.") if not view.weights.pretrained else ""
    verdict = {
        "alike": ("**High: do not trust this map.** It hardly changes when the learned weights are replaced by random "
                  "ones, so it shows the picture and the layer's shape, not what the model learned."),
        "partly": ("**In between: trust it with care.** Part of the map survives random weights (the picture's own "
                   "structure, the layer's shape); a value near 1 would mean it does not depend on what the model learned."),
        "different": ("**Low: it passes this check.** The map changes when the learned weights are replaced by random ones, "
                      "so it depends on what the model learned. A high value (near 1) would mean it does not: don't trust it then."),
    }[view.verdict]
    return (f"**How alike (Adebayo et al. report both):** Spearman rank correlation **{view.spearman:.2f}**, SSIM "
            f"**{view.ssim:.2f}** between the map with the page's weights and this one (absolute maps scaled to 0–1; "
            f"1 is the same map; the words use 0.8 and 0.4 as a rule of thumb). {verdict}{same}")


@user_errors
def show_projection(model, image, layer, channel, method, weights):
    if not image:
        return None, NO_IMAGE
    return projection(model, image, layer, channel, method, weights)


LINK = ("method", "class", "layer")  # ?tab=attribution&method=gradcampp&class=tabby&layer=layer4


def from_link(params: dict[str, str], model: str, weights: str) -> tuple[dict[str, str]]:
    """The tab's part of a page link (method, class, layer; only when the link opens this tab), held in the
    tab's link state until its first refresh, which knows the model's layers and labels, applies it."""
    if params.get("tab") != "attribution":
        return ({},)
    return ({k: params[k] for k in LINK if params.get(k)},)


def _linked(link: dict, choices, method: str, target: str, layer: str) -> tuple[str, str, str]:
    """(method, class, layer) as a page link names them; a link's mistake gets a warning and the default stays."""
    methods = [value for _, value in METHOD_CHOICES]
    if link.get("method") in methods:
        method = link["method"]
    elif link.get("method"):
        warn(f"The link's method {quoted(link['method'])} is not one of: {', '.join(methods)}.")
    if link.get("layer") in {info.name for info in choices.layers}:
        layer = link["layer"]
    elif link.get("layer"):
        warn(f"The link's layer {quoted(link['layer'])} is not a target layer of this model; showing {layer}.")
    wanted = link.get("class", "")
    if wanted in choices.labels or (wanted.isdigit() and (not choices.labels or int(wanted) < len(choices.labels))):
        target = wanted
    elif wanted:
        warn(f"The link's class {quoted(wanted)} is not a label or class index of this model; explaining its top class.")
    return method, target, layer


def _default_changes(method: str, choices) -> bool:
    """Whether a model change moves the method to the new model's default: a vision transformer opens on
    attention rollout where the page shows the CNN default (Grad-CAM; a CAM at a token layer may be all zero),
    a model that is no transformer goes back to Grad-CAM from an attention method it cannot take (LeGrad
    likewise for a timm ViT). Any other method the user picked stays."""
    if method in explore.ATTENTION_METHODS:
        return method not in choices.attention
    return method == "gradcam" and choices.default_method != "gradcam"


@user_errors
def refresh(model, weights, image, method, target, layer, opacity, link):
    """After a model change: its layers (the default target chosen), its labels, and the map again. A page
    link's method, class and layer apply once, when the page opens."""
    choices = explore.attribution_choices(model, weights)
    names = {info.name for info in choices.layers}
    keep = layer if layer in names else choices.default_layer
    by_index = str(target).isdigit() and (not choices.labels or int(target) < len(choices.labels))
    target = target if target in choices.labels or by_index else ""  # what the user chose stays, if this model has it
    chosen = gr.skip()  # the method radio is the user's: only a link or a model family's default sets it
    if _default_changes(method, choices):
        method = chosen = choices.default_method
    if link:
        method, target, keep = _linked(link, choices, method, target, keep)
        chosen = method
    labels = gr.Dropdown(choices=[""] + list(choices.labels), value=target)
    layers = gr.Dropdown(choices=[(info.label, info.name) for info in choices.layers], value=keep)
    drawn = show(model, image, method, target, keep, weights, opacity)
    if not isinstance(drawn, tuple):  # one skip: a newer refresh of this page is queued (it draws the map)
        drawn = (gr.skip(),) * 4
    return (layers, labels, chosen, {}, *drawn)


@dataclass
class AttributionTab(Refresh):
    layer: gr.Dropdown
    target: gr.Dropdown
    method: gr.Radio
    photo: Photo
    link_outputs: list  # what from_link's answer goes to


def build(state: PageState) -> AttributionTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh."""
    model, weights = state.model, state.weights
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            photo = photo_box("Your image", "attr-image")
            image = photo.box
            method = gr.Radio(METHOD_CHOICES, value="gradcam", label="Method", elem_id="attr-method")
            target = gr.Dropdown([""], value="", label="Class to explain (empty: the top class)", allow_custom_value=True,
                                 filterable=True, elem_id="attr-target", info="Type to search the labels, or a class index.")
            layer = gr.Dropdown([], value="", label="Target layer", allow_custom_value=True, elem_id="attr-layer",
                                info="Default: the last map before the network pools it away.")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity of the map over the picture", elem_id="attr-opacity")
        with gr.Column(scale=2, min_width=320):
            caption = gr.Markdown(NO_IMAGE, elem_id="attr-caption")
            overlay = gr.Image(label="The map over the picture the model saw", type="filepath", interactive=False, height=420,
                               buttons=["download", "fullscreen"], elem_id="attr-overlay")
            explained = gr.Label(label="Class explained", elem_id="attr-class")
            npy = gr.File(label="Raw map (.npy, float32, the target layer's height × width; for a ViT's attention methods, its patch grid)", elem_id="attr-npy")
    with gr.Group(elem_id="attr-sanity"):
        check = gr.Button("Sanity check: the same map with random weights (Adebayo et al. 2018)", elem_id="attr-sanity-button")
        with gr.Row():
            random_overlay = gr.Image(label="Random weights", type="filepath", interactive=False, height=320,
                                      elem_id="attr-random-overlay")
            random_caption = gr.Markdown(SANITY, elem_id="attr-random-caption")
    with gr.Accordion("Guided Grad-CAM: the pixels behind the class", open=False, elem_id="attr-guided"):
        guided_go = gr.Button("Guided Grad-CAM for the class above", elem_id="attr-guided-button")
        guided = gr.Image(label="Guided Grad-CAM (left) beside the picture the model saw (right)", type="filepath",
                          interactive=False, height=320, elem_id="attr-guided-image")
        guided_caption = gr.Markdown(elem_id="attr-guided-caption", label="caption")
    with gr.Accordion("Which map to trust: deletion, insertion, Average Drop", open=False, elem_id="attr-quality"):
        gr.Markdown(QUALITY_INTRO)
        with gr.Row():
            quality_methods = gr.Dropdown(QUALITY_CHOICES, value=[], multiselect=True, elem_id="attr-quality-methods", scale=3,
                                          label="Methods to score", info=f"None chosen: the model's default ({QUALITY_DEFAULTS}).")
            quality_go = gr.Button("Which map to trust? Score the maps on this photo", elem_id="attr-quality-button", scale=1)
        quality_caption = gr.Markdown(elem_id="attr-quality-caption")
        quality_table = gr.Dataframe(headers=QUALITY_COLUMNS, interactive=False, label=QUALITY_TABLE_LABEL,
                                     elem_id="attr-quality-table")
        with gr.Row():
            plot = dict(x="fraction of pixels", y="probability", color="method", y_lim=[0, 1], height=360)
            # the title inside the plot (a label above it pushed the legend out of the block's height)
            deletion_plot = gr.LinePlot(title="Deletion: top-ranked pixels removed (falls fast = good)", show_label=False,
                                        label="Deletion curves", elem_id="attr-quality-deletion", **plot)
            insertion_plot = gr.LinePlot(title="Insertion: top-ranked pixels put back (rises fast = good)", show_label=False,
                                         label="Insertion curves", elem_id="attr-quality-insertion", **plot)
    with gr.Accordion("Zeiler–Fergus projection of one channel", open=False, elem_id="attr-projection"):
        with gr.Row():
            channel = gr.Number(value=0, precision=0, label="Channel", elem_id="attr-channel")
            how = gr.Radio(PROJECTION_CHOICES, value="guided_backprop", label="Projection", elem_id="attr-how")
            go = gr.Button("Project", elem_id="attr-project")
        projected = gr.Image(label="Projection (left) beside the part of the picture it covers (right)", type="filepath",
                             interactive=False, height=320, elem_id="attr-projected")
        projected_caption = gr.Markdown(elem_id="attr-projection-caption")

    cam_inputs = [model, image, method, target, layer, weights, opacity]
    cam_outputs = [overlay, npy, explained, caption]
    api_only = gr.Button(visible=False)  # the public endpoints are strict: no image is an error there
    api_only.click(attribution, cam_inputs, cam_outputs, **HEAVY, api_name="attribution")
    api_only.click(projection, [model, image, layer, channel, how, weights], [projected, projected_caption],
                   **HEAVY, api_name="projection")
    api_only.click(guided_gradcam, [model, image, target, layer, weights], [guided, guided_caption],
                   **HEAVY, api_name="guided_gradcam")
    quality_inputs = [model, image, target, layer, weights, quality_methods]
    quality_outputs = [quality_table, deletion_plot, insertion_plot, quality_caption]
    api_only.click(explanation_quality, quality_inputs, quality_outputs, **HEAVY, api_name="explanation_quality")
    quality_go.click(show_quality, quality_inputs, quality_outputs, **HEAVY, api_visibility="private",
                     show_progress_on=[quality_table])  # the caption stays readable
    guided_go.click(show_guided, [model, image, target, layer, weights], [guided, guided_caption],
                    **HEAVY, api_visibility="private")
    # A new question goes to cam_asked at once (light lane; it stops a map still running for an older one), then
    # to the map. One listener per trigger: a second on the photo's change looped for ever in Gradio 6.31 when the
    # photo arrived while this tab was not yet drawn (each run re-fired the change; see the browser test).
    # (always_last: a choice made while a map runs is drawn when that one ends, which cam_asked makes early)
    redraw = dict(fn=show, inputs=cam_inputs, outputs=cam_outputs, **HEAVY, trigger_mode="always_last", api_visibility="private",
                  show_progress_on=[overlay])  # the caption stays readable meanwhile: it says what the run will take
    gr.on([image.change, method.change, target.change, layer.input], cam_asked, cam_inputs[:-1], caption,
          concurrency_id=WORK, trigger_mode="always_last", api_visibility="private").then(**redraw)
    opacity.change(**redraw)
    check.click(sanity, [model, image, method, target, layer, opacity, weights], [random_overlay, random_caption],
                **HEAVY, api_visibility="private")
    go.click(show_projection, [model, image, layer, channel, how, weights], [projected, projected_caption],
             **HEAVY, api_visibility="private")
    link = gr.State({})  # the tab's part of the page's link, until the first refresh applies it
    io = dict(inputs=[model, weights, image, method, target, layer, opacity, link],
              outputs=[layer, target, method, link, *cam_outputs], **HEAVY)
    return AttributionTab(refresh, io, layer, target, method, photo, [link])
