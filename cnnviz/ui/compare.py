"""The Compare tab: two models (or trained and untrained weights, or two photos through one model) side
by side, and the user's own checkpoint.

Public endpoints: ``/compare``, ``/load_checkpoint``.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import explore
from ..errors import CnnvizError, InvalidImageError
from .common import (
    HEAVY,
    OUTPUTS,
    PageState,
    Photo,
    Refresh,
    Refusal,
    SafeFile,
    SafeImage,
    in_page,
    label_dict,
    photo_box,
    user_errors,
    warn,
    weights_used,
)

TWO_MODELS, TWO_PHOTOS = "two-models", "two-photos"
MODE_CHOICES = [("Two models (or weights), one photo", TWO_MODELS), ("One model, two photos", TWO_PHOTOS)]
VIEW_CHOICES = [("First-layer filters", "filters"), ("Feature maps at each stage", "stages"), ("Grad-CAM", "cam")]
NO_IMAGE = "Upload a photo, paste one, or pick an example: both sides see it (in two-photo mode, B sees the second one)."
NO_SECOND = "One model, two photos: upload the second photo for side B."
VIEW_WORDS = {
    "filters": "each model's first convolution, its filters drawn the same way",
    "stages": ("the first convolution and the output of each stage, matched by stride (1/4, 1/8, 1/16, 1/32 of "
               f"the input); the {explore.COMPARE_TILES} channels with the highest mean on each side, their indices on the tiles"),
    "cam": ("Grad-CAM at each model's last map before pooling, each picture scaled to its own maximum (its colour "
            "bar says it); on one photo with the same classes on both sides (ImageNet's, as timm or torchvision spells "
            "them), B explains A's top class, on two photos each its own"),
}
UPLOAD_LINKS = ("The name is not listed anywhere, but it is not secret either: \"Explore it in every tab\" puts it in "
                "the address bar, and a link with it works for anyone, on this server only, while the server holds "
                "the upload (until it restarts or needs the room); elsewhere or later the link says the model is unknown.")
CHECKPOINT_TYPES = list(explore.CHECKPOINT_SUFFIXES)  # what the checkpoint reader accepts


def _files(view: explore.CompareView) -> list[tuple[str, str]]:
    """The gallery: the pairs row by row, A then B, each file captioned with its side and layer."""
    items = []
    for i, pair in enumerate(view.pairs):
        for side, image, caption in (("A", pair.a, pair.caption_a), ("B", pair.b, pair.caption_b)):
            path = OUTPUTS.write(f"compare-{view.view}-{i}-{side}.png", explore.encode(image, "png"))
            items.append((path, f"{side} · {pair.title} · {caption}"))
    return items


def _caption(view: explore.CompareView) -> str:
    a, b = view.a, view.b
    return (
        f"**A:** {a.title} (`{a.model}`) — **B:** {b.title} (`{b.model}`). Shown: {VIEW_WORDS[view.view]}. "
        f"Each row pairs the same depth, its layers named above each picture.\n\n"
        f"A: {weights_used(a.weights)}\n\nB: {weights_used(b.weights)}"
    )


def _top5(side: explore.CompareSide):
    return label_dict(side.predictions) or {f"{side.display}: no class labels": 0.0}


def _run(model_a, model_b, image, weights_a, weights_b, view, image_b):
    found = explore.compare(model_a, model_b, image, weights_a, weights_b, view, image_b)
    return found, _files(found)


@user_errors
def compare(model_a: str, model_b: str, image: str, weights_a: str = "pretrained", weights_b: str = "random",
            view: str = "filters", image_b: str | None = None):
    """The same view of two models side by side: their first-layer filters, their feature maps at each stage, or their Grad-CAM, with both top-5s.

    Args:
        model_a: side A's model: a curated key, a torchvision name, timm/<name>, or upload/<digest> from /load_checkpoint.
        model_b: side B's model, any name model_a takes (timm/<name>, upload/<digest>, ...); the same as model_a for weights or two photos.
        image: an image uploaded to this app, as for /feature_maps (both sides see it, unless image_b is given).
        weights_a: "pretrained" or "random".
        weights_b: "pretrained" or "random".
        view: "filters" (first-layer filters), "stages" (first convolution and each stage's output, matched by stride /4 /8 /16 /32) or "cam" (Grad-CAM).
        image_b: optional second image for side B (two photos through one model); empty: B sees image.
    """
    found, files = _run(model_a, model_b, image, weights_a, weights_b, view, image_b)
    return files, _top5(found.a), _top5(found.b), _caption(found)


def _slider(pairs: list[tuple[str, str, str, bool]], title: str):
    """The slider for the pair called ``title`` (its two pictures when they have the same size)."""
    for name, a, b, same in pairs:
        if name == title:
            if same:
                return gr.ImageSlider(value=(a, b), label=f"{name}: A ◀ drag ▶ B", visible=True), ""
            return (gr.ImageSlider(value=None, visible=False),
                    f"The two pictures of **{name}** differ in size, so they cannot be laid one over the other; they are side by side above.")
    return gr.ImageSlider(value=None, visible=False), ""


ROWS = 1 + len(explore.STAGE_STRIDES)  # the first convolution and one row per stage stride


def _rows(found: explore.CompareView | None, files: list[tuple[str, str]]) -> list:
    """Each page row's updates: its visibility, its title, then side A's and side B's picture (labelled
    with the layer)."""
    updates = []
    for i in range(ROWS):
        if found is None or i >= len(found.pairs):
            updates += [gr.Column(visible=False), gr.skip(), None, None]
            continue
        pair = found.pairs[i]
        updates += [gr.Column(visible=True), f"**{pair.title}**",
                    gr.Image(value=files[2 * i][0], label=f"A · {pair.caption_a}"),
                    gr.Image(value=files[2 * i + 1][0], label=f"B · {pair.caption_b}")]
    return updates


def _nothing(message: str) -> tuple:
    return (None, None, message, [], gr.Dropdown(choices=[], value=None), gr.ImageSlider(value=None), "",
            gr.Group(visible=False), *_rows(None, []))


@in_page(outputs=8 + 4 * ROWS, caption=2)
def show(mode, model_a, weights_a, model_b, weights_b, image, image_b, view):
    """The page's comparison: both top-5s, the caption, the slider on the first pair, and the rows."""
    if not image:
        return _nothing(NO_IMAGE)
    if not model_a or (mode == TWO_MODELS and not model_b):
        # the sides are not set yet (a photo dropped while the page opens: the model change that sets them
        # draws the comparison, possibly before this older event runs) or a box was emptied: keep what is shown
        return tuple(gr.skip() for _ in _nothing(""))
    if mode == TWO_PHOTOS:
        if not image_b:
            return _nothing(NO_SECOND)
        model_b = model_a
    else:
        image_b = None
    try:
        found, files = _run(model_a, model_b, image, weights_a, weights_b, view, image_b)
    except InvalidImageError as e:  # the page's one photo: Feature maps says it in a toast; here, in the caption
        return _nothing(f"⚠️ {e}")
    pairs = [(p.title, files[2 * i][0], files[2 * i + 1][0], p.same_size) for i, p in enumerate(found.pairs)]
    first = pairs[0][0] if pairs else None
    slider, note = _slider(pairs, first)
    picker = gr.Dropdown(choices=[p[0] for p in pairs], value=first)
    return (_top5(found.a), _top5(found.b), _caption(found), pairs, picker, slider, note, gr.Group(visible=True),
            *_rows(found, files))


@user_errors
def slide(pairs, title):
    return _slider(pairs or [], title)


def show_loaded(uploaded, *page_inputs):
    """The comparison after a checkpoint load: drawn again when the load gave a name, else left as it is."""
    return show(*page_inputs) if uploaded else tuple(gr.skip() for _ in range(8 + 4 * ROWS))


def mode_changed(mode, weights_a):
    """Two photos: B is A's model with A's weights, and the second photo box appears."""
    photos = mode == TWO_PHOTOS
    return (gr.Dropdown(visible=not photos), gr.Radio(value=weights_a) if photos else gr.skip(), gr.Image(visible=photos))


@user_errors
def load_checkpoint(model: str, checkpoint: str, labels: str | None = None):
    """Load your own checkpoint into an architecture; the answer's name works as `model` in every endpoint while the server holds it.

    Args:
        model: the architecture: a curated key, a torchvision name or timm/<name> (e.g. resnet18).
        checkpoint: an uploaded .safetensors file, or a PyTorch state dict (.pt, .pth, .bin, .ckpt), never unpickled.
        labels: optional uploaded text file with one class label per line, for a checkpoint with its own classes.
    """
    if not checkpoint:
        raise Refusal(f"Upload a checkpoint file ({', '.join(CHECKPOINT_TYPES)}) first.")
    report = explore.load_checkpoint(model, checkpoint, labels or None)
    return report.name, report.describe().replace("\n", "\n\n")  # one paragraph per line in Markdown


@in_page(outputs=6, caption=1, cleared={0: "", 5: gr.Button(visible=False)})
def load_for_page(model, checkpoint, labels):
    """The page's version: also puts the upload in both sides' lists (this page only) and on side B. A
    failed load says why where the report was, and the previous upload's name and button go."""
    name, text = load_checkpoint(model, checkpoint, labels)
    text += f"\n\n🔗 {UPLOAD_LINKS}"
    choices = [(f"{explore.select_model(name).spec.display} ({name[:15]}…)", name), *explore.curated_models()]
    return (name, text, gr.Dropdown(choices=choices), gr.Dropdown(choices=choices, value=name),
            gr.Radio(value="pretrained"), gr.Button(visible=True))


LINK = ("b", "bweights", "view")  # ?tab=compare&b=resnet50&bweights=pretrained&view=stages


def from_link(params: dict[str, str], model: str, weights: str) -> tuple[dict[str, str]]:
    """The tab's part of a page link (side B, its weights, the view; only when the link opens this tab),
    held in the tab's link state until its first refresh applies it (after the model at the top is set)."""
    if params.get("tab") != "compare":
        return ({},)
    return ({k: params[k] for k in LINK if params.get(k)},)


def _linked(link: dict, model_b: str, weights_b: str, view: str) -> tuple[str, str, str]:
    """Side B and the view as a page link names them (``?tab=compare&b=…&bweights=…&view=…``); a link's
    mistake gets a warning and the default stays."""
    if link.get("b"):
        try:
            model_b = explore.select_model(link["b"], link.get("bweights") or weights_b).spec.key
        except CnnvizError as e:
            warn(f"The link's side B: {e}")
    if link.get("bweights") in explore.WEIGHT_CHOICES:
        weights_b = link["bweights"]
    if link.get("view") in explore.COMPARE_VIEWS:
        view = link["view"]
    elif link.get("view"):
        warn(f"The link's view {link['view'][:80]!r} is not one of: {', '.join(explore.COMPARE_VIEWS)}.")
    return model_b, weights_b, view


@user_errors
def refresh(model, weights, mode, weights_b, image, image_b, view, link):
    """After a model change at the top: both sides show it (A with the page's weights, B with the
    other choice: trained against untrained), compared again when there is a photo. A page link's side B
    and view apply once, when the page opens."""
    other = "random" if weights == "pretrained" else "pretrained"
    model_b, b_weights = model, weights if mode == TWO_PHOTOS else other
    if link:
        model_b, b_weights, view = _linked(link, model_b, b_weights, view)
    return (model, weights, model_b, b_weights, model, view, {},
            *show(mode, model, weights, model_b, b_weights, image, image_b, view))


@dataclass
class CompareTab(Refresh):
    use_everywhere: gr.Button  # "explore the upload in every tab": the shell wires it to its model picker
    uploaded: gr.Textbox  # the upload's name
    models: tuple[gr.Dropdown, ...]  # the model boxes (A, B, the checkpoint's architecture): free text
    checkpoint: gr.File
    labels: gr.File
    weights_b: gr.Radio
    view: gr.Radio
    link: gr.State  # what from_link read of the page's link for this tab
    photo: Photo
    link_outputs: list  # what from_link's answer goes to


def build(state: PageState) -> CompareTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh."""
    model, weights = state.model, state.weights
    curated = explore.curated_models()
    gr.Markdown("A and B start from the model chosen at the top, trained against untrained; change either "
                "side here without changing the other tabs.", elem_id="cmp-intro")
    mode = gr.Radio(MODE_CHOICES, value=TWO_MODELS, label="Compare", elem_id="cmp-mode")
    with gr.Row():
        with gr.Column(min_width=280):
            model_a = gr.Dropdown(curated, value="", label="A: model", allow_custom_value=True, elem_id="cmp-model-a")
            weights_a = gr.Radio(list(explore.WEIGHT_CHOICES), value="pretrained", label="A: weights", elem_id="cmp-weights-a")
        with gr.Column(min_width=280):
            model_b = gr.Dropdown(curated, value="", label="B: model", allow_custom_value=True, elem_id="cmp-model-b")
            weights_b = gr.Radio(list(explore.WEIGHT_CHOICES), value="random", label="B: weights", elem_id="cmp-weights-b")
    with gr.Row():
        with gr.Column():
            photo = photo_box("Photo", "cmp-image", height=240)
            image = photo.box
        image_b = SafeImage(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Second photo (side B)",
                            elem_id="cmp-image-b", height=240, visible=False)
    view = gr.Radio(VIEW_CHOICES, value="filters", label="View", elem_id="cmp-view")
    caption = gr.Markdown(NO_IMAGE, elem_id="cmp-caption")
    with gr.Row():
        top_a = gr.Label(num_top_classes=5, label="A: top-5", elem_id="cmp-top-a")
        top_b = gr.Label(num_top_classes=5, label="B: top-5", elem_id="cmp-top-b")
    rows = []
    for i in range(ROWS):
        with gr.Column(visible=False, elem_classes=["cmp-row"]) as row:
            title = gr.Markdown(elem_id=f"cmp-title-{i}")
            with gr.Row(equal_height=True):
                a = gr.Image(type="filepath", interactive=False, height=460, buttons=["download", "fullscreen"],
                             elem_id=f"cmp-a-{i}", elem_classes=["cmp-picture"])
                b = gr.Image(type="filepath", interactive=False, height=460, buttons=["download", "fullscreen"],
                             elem_id=f"cmp-b-{i}", elem_classes=["cmp-picture"])
        rows += [row, title, a, b]
    gallery = gr.Gallery(label="A and B, row by row", visible=False, elem_id="cmp-gallery")  # /compare's answer
    with gr.Group(visible=False) as slider_group:
        picker = gr.Dropdown([], value=None, label="Lay one over the other", elem_id="cmp-pair",
                             info="Drag the slider to wipe from A to B at the same depth.")
        slider = gr.ImageSlider(label="A ◀ drag ▶ B", type="filepath", interactive=False, elem_id="cmp-slider", height=480)
        slider_note = gr.Markdown(elem_id="cmp-slider-note")
    pairs = gr.State([])
    with gr.Accordion("Your own checkpoint", open=False, elem_id="cmp-checkpoint"):
        gr.Markdown(
            f"Load a checkpoint you trained into one of the architectures: a `.safetensors` file or a PyTorch state "
            f"dict ({', '.join(CHECKPOINT_TYPES[1:])}, read with `torch.load(weights_only=True)`: files holding pickled "
            f"objects are refused, never unpickled). Up to {explore.CHECKPOINT_LIMIT_MB:g} MB. Nested `state_dict` / `model` keys, "
            "`module.` prefixes and timm EMA weights are understood; a checkpoint with its own classes keeps its "
            "head (give a labels file, one per line, to see its predictions). The upload gets a name (`upload/…`) and "
            "goes on side B. " + UPLOAD_LINKS
        )
        with gr.Row():
            arch = gr.Dropdown(curated, value="", label="Architecture", allow_custom_value=True, elem_id="cmp-arch")
            checkpoint = SafeFile(label="Checkpoint", type="filepath", file_types=CHECKPOINT_TYPES, file_count="single",
                                  elem_id="cmp-checkpoint-file")
            labels = SafeFile(label="Labels (optional, .txt)", type="filepath", file_types=[".txt"], file_count="single",
                              elem_id="cmp-labels-file")
        load = gr.Button("Load checkpoint", elem_id="cmp-load")
        uploaded = gr.Textbox(label="Its model name", interactive=False, elem_id="cmp-uploaded")
        report = gr.Markdown(elem_id="cmp-report")
        use_everywhere = gr.Button("Explore it in every tab", visible=False, elem_id="cmp-use")

    api_inputs = [model_a, model_b, image, weights_a, weights_b, view, image_b]
    api_only = gr.Button(visible=False)  # the public endpoints are strict: no image is an error there
    api_only.click(compare, api_inputs, [gallery, top_a, top_b, caption], **HEAVY, api_name="compare")
    api_only.click(load_checkpoint, [arch, checkpoint, labels], [uploaded, report], **HEAVY,
                   api_name="load_checkpoint")
    page_inputs = [mode, model_a, weights_a, model_b, weights_b, image, image_b, view]
    page_outputs = [top_a, top_b, caption, pairs, picker, slider, slider_note, slider_group, *rows]
    mode.change(mode_changed, [mode, weights_a], [model_b, weights_b, image_b], api_visibility="private", queue=False)
    gr.on([mode.change, model_a.input, weights_a.input, model_b.input, weights_b.input, image.change, image_b.change,
           view.change], show, page_inputs, page_outputs, **HEAVY, trigger_mode="always_last",
          api_visibility="private")
    picker.input(slide, [pairs, picker], [slider, slider_note], api_visibility="private")  # queued: a refusal comes with its sentence
    load.click(load_for_page, [arch, checkpoint, labels],
               [uploaded, report, model_a, model_b, weights_b, use_everywhere], **HEAVY,
               api_visibility="private").success(show_loaded, [uploaded, *page_inputs], page_outputs, **HEAVY,
                                                 api_visibility="private")
    link = gr.State({})  # Compare's part of the page's link, until the first refresh applies it
    io = dict(inputs=[model, weights, mode, weights_b, image, image_b, view, link],
              outputs=[model_a, weights_a, model_b, weights_b, arch, view, link, *page_outputs], **HEAVY)
    return CompareTab(refresh, io, use_everywhere, uploaded, (model_a, model_b, arch), checkpoint, labels,
                      weights_b, view, link, photo, [link])
