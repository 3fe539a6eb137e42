"""The Gradio app: the shell (header, model picker, tabs, queue) and one module per tab.

The only package that imports gradio; it calls nothing of the library but :mod:`cnnviz.explore` (and
:mod:`cnnviz.server` for the process's temp folder and middlewares). Public endpoints: each tab's
(``/architecture``, ``/filters``, ``/feature_maps``, ``/channel``, ``/layer_stats``, ``/activations``,
``/channel_visualization``, ``/attribution``, ``/projection``, ``/guided_gradcam``, ``/compare``,
``/load_checkpoint``, ``/atlas``, ``/atlas_job``, ``/dataset_examples``, ``/collection_table``); everything else is wired as private events.

A new view is a new ``explore`` function, a new ``ui/<tab>.py`` with ``build(model, weights)`` and
its tests.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from .. import cancel, explore, server
from ..errors import CnnvizError, quoted
from . import architecture as architecture_tab
from . import attribution as attribution_tab
from . import collection as collection_tab
from . import compare as compare_tab
from . import feature_maps as feature_maps_tab
from . import featurevis, webcam
from . import filters as filters_tab
from .architecture import architecture
from .common import (
    EXAMPLE_FILES,
    MAX_PER_CLIENT,
    MAX_PER_SESSION,
    MAX_UPLOAD,
    UPLOAD_QUOTA,
    WORK,
    PageState,
    Refresh,
    check_call,
    example_name,
    example_path,
    layer_dropdown,
    limit_clients,
    user_errors,
    warn,
    weights_used,
)
from .feature_maps import feature_maps
from .filters import filters
from .gradio_patches import CheckedBlocks, document_as_text, document_example

__all__ = ["CSS", "architecture", "build_demo", "feature_maps", "filters", "launch"]

# Grids arrive at (about) the maps' own resolution; the page enlarges them with crisp pixels.
CSS = (
    "#maps-image img, #filters-image img, #channel-map img, .cmp-picture img, #cmp-slider img"
    " { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
    " #channel-overlay img { width: 100%; height: 100%; object-fit: contain; }"  # the photo: smooth when enlarged
    # a phone: the grids as tall as they are wide, not centred in a 640 px box
    " @media (max-width: 640px) { #maps-image, #filters-image { height: auto !important; }"
    " #maps-image img, #filters-image img { height: auto; } }"
    # Gradio floats a picture's label (top left) and its buttons (top right) over the picture: room above
    # it for them, so they never cover the top row of tiles, nor each other on a phone
    " #maps-image .image-container > button, #filters-image .image-container > button,"
    " .cmp-picture .image-container > button, #webcam-maps .image-container > button { padding-top: 34px; }"
)


def model_notice(view: explore.ModelView) -> str:
    """The line under the model picker: which model, where, with which weights."""
    spec = view.spec
    icon, _, weights = weights_used(view.weights).partition(" ")  # "✅ Pretrained weights: …", the answers' line
    line = f"{icon} **{spec.display}** · {spec.source} · `{spec.key}` · on {view.device} — {weights}"
    return line + (f"\n\nℹ️ {view.note}" if view.note else "")


def weights_radio(view: explore.ModelView, weights: str) -> gr.Radio:
    """The Weights radio with ``weights`` chosen, its "pretrained" choice naming what was loaded: after a
    fallback it says random weights were used (the value, the user's choice, stays "pretrained" for links)."""
    fell_back = "pretrained (not available: random weights)" if view.weights.notice else None
    return gr.Radio(choices=[(fell_back or choice, choice) if choice == "pretrained" else (choice, choice)
                             for choice in explore.WEIGHT_CHOICES], value=weights)


# --- deep links: the page's state in its address. The shell reads model, weights, tab and photo; each tab
# reads its own part (its module's LINK and from_link): ?model=resnet50&weights=random&photo=coffee&tab=attribution
# &method=gradcampp&class=tabby&layer=layer4 · Feature maps: layer, channel · Filters: layer · Compare: b, bweights, view

TABS = {"architecture": "Architecture", "filters": "Filters", "feature-maps": "Feature maps", "attribution": "Attribution",
        "compare": "Compare", "collection": "Collection"}
LINK_LIMIT = 200  # characters of a URL parameter read at all (names are far shorter)
TAB_MODULES = (feature_maps_tab, filters_tab, attribution_tab, compare_tab, collection_tab)  # the tabs with a part of the link, in output order
LINK_KEYS = tuple(dict.fromkeys(("model", "layer", "tab", "weights", "photo", *(k for m in TAB_MODULES for k in m.LINK))))
PHOTO_TABS = ("feature-maps", "attribution", "compare")  # the tabs with a photo box, in output order

# Writes the view into the address bar (no reload, no history entry), so copying it shares the view.
# Runs in the browser only. "/" stays readable in timm names (timm/resnet50.a1_in1k). An uploaded photo is
# not in the link (only this server holds it, for a while); an example is (photo=coffee).
SYNC_URL = """(model, weights, tab, photo, mapsLayer, channel, filtersLayer, attrLayer, method, target, modelB, weightsB, view, collection) => {
    const put = (k, v) => (v || v === 0) ? `${k}=${encodeURIComponent(v).replace(/%2F/g, '/')}` : null;
    const ours = OURS;
    const layer = tab === 'filters' ? filtersLayer : tab === 'attribution' ? attrLayer : mapsLayer;
    const views = {
        'feature-maps': [put('channel', channel)],
        'attribution': [put('method', method !== 'gradcam' ? method : null), put('class', target)],
        'compare': [put('b', modelB !== model ? modelB : null), put('bweights', weightsB),
                    put('view', view !== 'filters' ? view : null)],
        'collection': [put('collection', collection)],
    };
    const others = [...new URLSearchParams(location.search)].filter(([k]) => !ours.includes(k))  // ?__theme=dark stays
        .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
    const query = [put('model', model), put('layer', layer), put('tab', tab), weights === 'random' ? 'weights=random' : null,
                   put('photo', photo), ...(views[tab] || []), ...others].filter(Boolean).join('&');
    if (model) history.replaceState(history.state, '', `${location.pathname}${query ? '?' + query : ''}${location.hash}`);
    return [];
}""".replace("OURS", json.dumps(list(LINK_KEYS)))


def link_params(request: gr.Request | None) -> dict[str, str]:
    """The view named in the page's URL: every parameter the shell or a tab reads (:data:`LINK_KEYS`),
    each text, at most LINK_LIMIT characters ("" when absent)."""
    params = dict(request.query_params) if request is not None else {}
    link = {k: str(params.get(k, "")).strip()[:LINK_LIMIT] for k in LINK_KEYS}
    return {**link, "tab": link["tab"].lower()}  # tab ids, like model names, in any case


@user_errors
def open_page(request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    """Open the view the URL names (model, weights, tab, photo, and each tab's part), else the default
    model: the one load a page makes. A link's mistake gets its sentence (a warning) and the page opens
    what it can.

    Returns (model, weights, tabs, tab, banner, notice, shown, refresh, photo name, the photo for each box
    of :data:`PHOTO_TABS`, then each of :data:`TAB_MODULES`' ``from_link`` answers in order)."""
    link = link_params(request)
    weights = link["weights"] if link["weights"] in explore.WEIGHT_CHOICES else "pretrained"
    tab = link["tab"] if link["tab"] in TABS else "architecture"
    if link["tab"] and link["tab"] not in TABS:
        warn(f"The link's tab {quoted(link['tab'])} is not one of: {', '.join(TABS)}. Showing {TABS[tab]}.")
    banner, view = "", None
    if link["model"]:
        try:
            view = explore.select_model(link["model"], weights)
        except CnnvizError as e:
            warn(f"The link's model: {e}")
    if view is None:
        opened = explore.startup_model()
        banner = f"ℹ️ {opened.notice}" if opened.notice else ""
        view = explore.select_model(opened.model, weights)
    photo = example_path(link["photo"]) if link["photo"] else None
    if link["photo"] and photo is None:
        names = ", ".join(sorted(p.stem for p in EXAMPLE_FILES))
        warn(f"The link's photo {quoted(link['photo'])} is not one of the examples ({names}); an uploaded photo "
             "cannot travel in a link: upload it again.")
    key, parts = view.spec.key, {**link, "tab": tab}
    tabs_linked = [value for module in TAB_MODULES for value in module.from_link(parts, key, weights)]
    boxes = (photo if photo else gr.skip(),) * len(PHOTO_TABS)
    return (key, weights_radio(view, weights), gr.Tabs(selected=tab), tab, banner, model_notice(view), key, True,
            example_name(photo) if photo else gr.skip(), *boxes, *tabs_linked)


def share_photo(index: int):
    """The handler for a photo chosen in photo box ``index`` of :data:`PHOTO_TABS` (uploaded, pasted, an
    example, or cleared): every other box shows it, and the link names it when it is an example."""

    def chosen(path: str | None):
        return (*(path for i in range(len(PHOTO_TABS)) if i != index), example_name(path))

    chosen.__name__ = chosen.__qualname__ = "share_photo"
    return chosen


@user_errors
def open_example(shown: dict | None, evt: gr.SelectData):
    """A Collection gallery item clicked: its image (copied into the server's outputs) in every photo box,
    Feature maps opened at the atlas's layer and the channel. Returns (each box of :data:`PHOTO_TABS`, photo
    name, tabs, tab, maps layer, maps channel)."""
    opened = collection_tab.open_example(shown, evt)
    if opened is None:
        return (gr.skip(),) * (len(PHOTO_TABS) + 5)
    path, layer, channel = opened
    return (*(path,) * len(PHOTO_TABS), "", gr.Tabs(selected="feature-maps"), "feature-maps", layer, channel)


def _select(model: str, weights: str, layer: str, shown: str):
    """The model's notice and layer list; a name that cannot be opened puts the shown model back in the
    box and says why in a warning (no error badge over the notice), and the tabs keep what they show."""
    try:
        view = explore.select_model(model, weights)
    except CnnvizError as e:
        warn(str(e))
        return shown or gr.skip(), gr.skip(), gr.skip(), gr.skip(), False, gr.skip()
    keep = layer if any(info.name == layer for info in view.layers) else view.default_layer
    return view.spec.key, model_notice(view), layer_dropdown(view, keep), view.spec.key, True, weights_radio(view, weights)


@user_errors
def model_picked(model: str, weights: str, layer: str = "", shown: str = "", progress=gr.Progress(track_tqdm=True)):
    """A model picked or typed: its notice and layer list; the layer stays when the new model has one of
    that name (resnet18 → resnet34 at layer3.0.conv1 compares the two), else the first convolution."""
    return _select(model, weights, layer, shown)


@user_errors
def weights_switched(model: str, weights: str, layer: str, shown: str = "", progress=gr.Progress(track_tqdm=True)):
    """Weights switched: the same model's notice and layer list; the layer stays."""
    return _select(model, weights, layer, shown)


def when(flag: gr.State, tab: Refresh) -> dict:
    """The event arguments that run ``tab``'s refresh only when ``flag`` is true (else change nothing)."""
    outputs = tab.io["outputs"]

    def refresh_if(*args):
        *inputs, go = args
        if not go:
            return gr.skip() if len(outputs) == 1 else tuple(gr.skip() for _ in outputs)
        return tab.fn(*inputs)

    refresh_if.__name__ = refresh_if.__qualname__ = tab.fn.__name__
    own = inspect.signature(tab.fn)  # parameter names for check_call's sentences
    refresh_if.__signature__ = own.replace(parameters=[
        *list(own.parameters.values())[: len(tab.io["inputs"])],
        inspect.Parameter("refresh", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ])
    lane = {k: tab.io[k] for k in ("concurrency_id", "concurrency_limit") if k in tab.io}
    return dict(fn=refresh_if, inputs=[*tab.io["inputs"], flag], outputs=outputs, api_visibility="private",
                **{"concurrency_id": WORK, **lane})


@user_errors
def open_row(model: str, weights: str, opens: str, evt: gr.SelectData):
    """An Architecture row clicked: open its layer in Feature maps, or in Filters for a convolution; a row
    that cannot be shown there gets a sentence saying why. Returns (tabs, tab, maps layer, filters
    layer, note, open Feature maps)."""
    row = list(evt.row_value or [])
    if not row:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), False
    name, kind = str(row[0]).strip(), str(row[1]) if len(row) > 1 else ""
    shape = str(row[2]) if len(row) > 2 else ""
    if opens == "filters":
        convs = [conv.name for conv in explore.list_convolutions(model, weights)]
        if name in convs:
            return (gr.Tabs(selected="filters"), "filters", gr.skip(), name,
                    f"Opened `{name}` ({kind}) in **Filters**.", False)
        inside = [c for c in convs if c.startswith(name + ".")]
        hint = f" Convolutions inside it: {', '.join(f'`{c}`' for c in inside[:4])}{' …' if len(inside) > 4 else ''}." if inside else ""
        return (gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                f"`{name}` ({kind}) is not a convolution, so it has no filters to show.{hint}", False)
    try:
        info = explore.find_layer(model, weights, name)
    except CnnvizError:
        return (gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                f"`{name}` ({kind}) gives no map of the image to draw (its output is {shape}), "
                "so Feature maps cannot show it. Pick a row above it with a C×H×W output.", False)
    return (gr.Tabs(selected="feature-maps"), "feature-maps", info.name, gr.skip(),
            f"Opened `{info.name}` ({kind}) in **Feature maps**.", True)


def document_example_image(component: gr.Image, path: Path) -> None:
    """The API page's example for an image parameter: one of the app's examples, not a URL to fetch."""
    # as a clone names it (an installed package holds it elsewhere, and the server's working folder may be any)
    local = f"examples/{path.name}"  # the page writes handle_file('<url>') for a payload with a url
    document_example(component, {"path": local, "meta": {"_type": "gradio.FileData"}, "orig_name": path.name,
                                 "url": local}, local)


def document_example_file(component: gr.File, name: str) -> None:
    """The API page's example for a file parameter: a file of the caller's own (``handle_file('name')``),
    not Gradio's sample PDF on the web."""
    document_example(component, {"path": name, "meta": {"_type": "gradio.FileData"}, "orig_name": name, "url": name}, name)


def name_outputs(demo: gr.Blocks) -> None:
    """Give every output of a public endpoint a name in the API page (Gradio says ``value_11`` for a
    component without a label): its elem_id in words (``maps-caption`` → ``maps caption``)."""
    for fn in demo.fns.values():
        if fn.api_visibility != "public":
            continue
        for component in [*fn.inputs, *fn.outputs]:
            if isinstance(component, gr.Image) and component in fn.inputs:
                document_example_image(component, EXAMPLE_IMAGE)
        for component in fn.outputs:
            if getattr(component, "label", None) is None:
                elem_id = getattr(component, "elem_id", None) or type(component).__name__.lower()
                component.label = elem_id.replace("-", " ").replace("_", " ")


MODEL_API = (
    "Any torchvision classifier name (resnet50), timm/<name> or timm/<name>.<tag> "
    "(timm/convnext_tiny.fb_in1k), or a curated key such as alexnet; case-insensitive."
)
LAYER_API = ('A qualified module name as named_modules() gives it ("layer2.0.conv1", "features.3"); '
             'empty: the first convolution.')
TARGET_API = ('The class to explain: a label of the model ("tabby") or a class index ("281"); empty: the '
              "model's top class.")
EXAMPLE_IMAGE = next((p for p in sorted(EXAMPLE_FILES) if p.stem == "coffee"), min(EXAMPLE_FILES, default=None))


def build_demo() -> gr.Blocks:
    """Build the app. Nothing is loaded until a page opens (then the model its URL names, or the default)."""
    gr.set_static_paths(sorted(EXAMPLE_FILES))  # examples are served in place, never copied to the cache
    with CheckedBlocks(title="CNN Explorer", delete_cache=(3600, 3600), check_call=check_call) as demo:
        gr.Markdown(
            "# 🔬 CNN Explorer\nWhat a convolutional network is made of and what it sees: its layers, "
            "its filters, the feature maps of your own photo at any layer, why it decided, and two models "
            "side by side. The address bar always holds the view you see: copy it to share it."
        )
        with gr.Row():
            model = gr.Dropdown(
                explore.curated_models(), value=None, label="Model", allow_custom_value=True, scale=3, min_width=300,
                info="Pick one, or type any torchvision name (resnet34) or timm name (timm/resnet50.a1_in1k).",
                elem_id="model-select",
            )
            weights = gr.Radio(list(explore.WEIGHT_CHOICES), value="pretrained", label="Weights", scale=1, min_width=200)
        banner = gr.Markdown(elem_id="startup-banner")
        notice = gr.Markdown(elem_id="weights-notice")
        # what the page shows, kept in the page (hidden): the model's key, the tab, the Feature maps layer
        shown = gr.Textbox(visible=False)
        view_tab = gr.Textbox("architecture", visible=False)
        current = gr.Textbox(visible=False)
        refresh_all = gr.State(False)  # whether the last model/weights step changed the model shown
        open_maps = gr.State(False)  # whether the last row click opened Feature maps
        photo = gr.Textbox(visible=False)  # the shared photo's link name (an example's stem; "" otherwise)
        state = PageState(model, weights, photo, gr.Textbox(visible=False))
        with gr.Tabs(selected="architecture") as tabs:  # each tab wires its own public endpoint first
            with gr.Tab(TABS["architecture"], id="architecture") as arch_tab:
                arch = architecture_tab.build(state, current)
            with gr.Tab(TABS["filters"], id="filters") as filters_tab_:
                kernels = filters_tab.build(state)
            with gr.Tab(TABS["feature-maps"], id="feature-maps") as maps_tab:
                maps = feature_maps_tab.build(
                    state,
                    live=lambda *controls: webcam.build(state, *controls),
                    looks_for=lambda layer, channel, image: featurevis.build(state, layer, channel, image),
                )
            with gr.Tab(TABS["attribution"], id="attribution") as attr_tab:
                attr = attribution_tab.build(state)
            with gr.Tab(TABS["compare"], id="compare") as cmp_tab:
                cmp = compare_tab.build(state)
            with gr.Tab(TABS["collection"], id="collection") as col_tab:
                col = collection_tab.build(state)

        # one photo for the page: a photo chosen in any tab (uploaded, pasted, an example, cleared) goes in the
        # others' boxes (whose change events redraw them) and, when it is an example, in the address bar
        boxes = [maps.photo, attr.photo, cmp.photo]
        for index, chosen in enumerate(boxes):
            others = [p.box for p in boxes if p is not chosen]
            share = dict(fn=share_photo(index), inputs=chosen.box, outputs=[*others, photo], queue=False,
                         api_visibility="private")
            gr.on([chosen.box.upload, chosen.box.clear], **share)
            chosen.examples.load_input_event.then(**share)

        # a collection's image clicked: that photo in every box, Feature maps at its layer and channel
        col.gallery.select(open_example, col.shown, [*(p.box for p in boxes), photo, tabs, view_tab, maps.layer, maps.channel],
                           api_visibility="private", concurrency_id=WORK)

        linked = [out for tab in (maps, kernels, attr, cmp, col) for out in tab.link_outputs]  # TAB_MODULES' order
        chain = demo.load(
            open_page, None, [model, weights, tabs, view_tab, banner, notice, shown, refresh_all, photo,
                              *(p.box for p in boxes), *linked],
            api_visibility="private", concurrency_id=WORK,
        )
        starts = [chain]
        model.input(lambda: "", None, banner, api_visibility="private", queue=False)  # the user chose: banner done
        starts.append(model.input(model_picked, [model, weights, maps.layer, shown], [model, notice, maps.layer, shown, refresh_all, weights],
                                  api_visibility="private", concurrency_id=WORK))
        starts.append(weights.input(weights_switched, [model, weights, maps.layer, shown], [model, notice, maps.layer, shown, refresh_all, weights],
                                    api_visibility="private", concurrency_id=WORK))
        use = cmp.use_everywhere.click(  # the upload in every tab, starting with Feature maps (the photo is there too)
            model_picked, [cmp.uploaded, weights, maps.layer, shown], [model, notice, maps.layer, shown, refresh_all, weights],
            api_visibility="private", concurrency_id=WORK)
        use.success(lambda go: (gr.Tabs(selected="feature-maps"), "feature-maps") if go else (gr.skip(), gr.skip()),
                    refresh_all, [tabs, view_tab], api_visibility="private", queue=False)
        starts.append(use)
        for chain in starts:
            for tab in (arch, kernels, maps, attr, cmp, col):  # a model or weights change refreshes every tab, one after the other
                chain = chain.success(**when(refresh_all, tab))

        # linked views: a row of the Architecture table opens its layer in Feature maps or Filters
        arch.table.select(
            open_row, [model, weights, arch.opens], [tabs, view_tab, maps.layer, kernels.layer, arch.note, open_maps],
            api_visibility="private", concurrency_id=WORK,
        ).success(**when(open_maps, maps))

        # the address bar follows the view; the Architecture table highlights the Feature maps layer
        drawn = (arch_tab, filters_tab_, maps_tab, attr_tab, cmp_tab, col_tab)  # in TABS' order
        for tab_id, tab in zip(TABS, drawn, strict=True):
            tab.select(None, None, view_tab, js=f"() => '{tab_id}'", api_visibility="private", queue=False)
        maps.layer.change(None, maps.layer, current, js="(layer) => layer", api_visibility="private", queue=False)
        in_link = [shown, weights, view_tab, photo, maps.layer, maps.channel, kernels.layer, attr.layer, attr.method,
                   attr.target, cmp.models[1], cmp.weights_b, cmp.view, col.collection]  # SYNC_URL's parameters, in order
        gr.on([c.change for c in in_link], None, in_link, None, js=SYNC_URL,
              api_visibility="private", queue=False)
        document_as_text(model, MODEL_API, "resnet18")
        document_as_text(maps.layer, LAYER_API, "layer1.0.conv1")
        document_as_text(kernels.layer, "A convolution's qualified name (\"layer4.2.conv2\"); empty: the first convolution.", "")
        document_as_text(attr.layer, LAYER_API, "layer4")
        document_as_text(attr.target, TARGET_API, "")
        for picker in cmp.models:
            document_as_text(picker, MODEL_API + " Also upload/<digest> from /load_checkpoint.", "resnet18")
        document_example_file(cmp.checkpoint, "my-resnet18.safetensors")
        document_example_file(cmp.labels, "classes.txt")
        name_outputs(demo)
    # api_open=False: every call goes through the queue (Gradio's /run/<name> routes would skip it)
    demo.queue(max_size=int(os.environ.get("CNNVIZ_QUEUE_SIZE", "32")), default_concurrency_limit=2, api_open=False)
    limit_clients(demo, MAX_PER_SESSION, MAX_PER_CLIENT)
    return demo


def launch(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, mcp: bool | None = None,
           **launch_kwargs) -> gr.Blocks:
    """Build the demo and start serving it in background threads; returns the running demo.

    ``mcp=True`` also serves the public endpoints as MCP tools (``/gradio_api/mcp/``, Streamable HTTP); None
    leaves it to Gradio's ``GRADIO_MCP_SERVER`` environment variable. ``port=None``: the first free one from 7860.
    ``launch_kwargs`` go to ``Blocks.launch`` (``inline=``, ``height=``, ``auth=``, ...).

    Raises:
        OSError: the port is taken (Gradio's "Cannot find empty port ...")."""
    folder = server.private_temp_folder()  # app.py made it already; else now, before any component
    demo = build_demo()
    demo.launch(
        server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD, css=CSS,
        prevent_thread_lock=True, mcp_server=mcp,
        **{"quiet": True, **launch_kwargs},  # quiet: Gradio's hints name launch()'s arguments, not the app's flags
        app_kwargs={"middleware": [
            Middleware(server.BodyLimit, upload_limit=int((explore.CHECKPOINT_LIMIT_MB + 1) * 2**20)),
            Middleware(server.UploadGuard, quota=server.disk_quota(folder, UPLOAD_QUOTA)),
            Middleware(cancel.StreamWatch),  # who still reads a result: work nobody waits for stops
            Middleware(server.ReturnFreedMemory),  # kept while requests come (no page faults), returned when quiet
        ]},
    )
    if demo.mcp_error:
        print(demo.mcp_error)
    print(f"* Running on local URL:  {demo.local_url}")
    if not share:
        print("* To create a public link, start the app with --share (python app.py --share).")
    return demo
