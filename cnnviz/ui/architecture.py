"""The Architecture tab: per-layer table, totals, CSV and torchinfo-style text; endpoint ``/architecture``.

The page's table is for reading: names indented by nesting depth, numbers with thousands separators,
pass-through rows (``Identity``) left out, the layer open in Feature maps highlighted. A row click
opens that layer in Feature maps or Filters (the shell wires it: it owns the tabs). The endpoint
answers the library's rows as they are (every row, plain numbers), like the CSV.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from .. import explore
from .common import OUTPUTS, WORK, PageState, Refresh, user_errors, weights_used, whole

TABLE_HEADERS = ["layer", "type", "output shape", "kernel", "stride", "params", "MACs"]
PASS_THROUGH = frozenset({"Identity"})  # rows that only hand their input on: left out of the page's table
INDENT = "\u2003"  # one em space per nesting level (not collapsed by the browser, stripped by str.strip)
HIGHLIGHT = "background-color: rgba(99, 102, 241, 0.28); font-weight: 600"
OPENS = [("Feature maps", "feature-maps"), ("Filters (convolutions)", "filters")]
ROW_HINT = "Click a row to open that layer in the view chosen above; the highlighted row is the layer open in Feature maps."


@user_errors
def architecture(model: str, weights: str = "pretrained", depth: float = 3):
    """Per-layer table, totals, CSV file and text summary of a model (every row, plain numbers).

    Args:
        model: a torchvision classifier name (resnet50), timm/<name>[.<tag>] (timm/convnext_tiny.fb_in1k) or a curated key (alexnet).
        weights: "pretrained" (ImageNet weights; random ones, said so, when they cannot be had) or "random".
        depth: how deep to list nested modules, 1 (top-level blocks) to 8.
    """
    totals, s, csv_path, text = _answer(model, weights, depth)
    rows = [[r.name, r.type, _shape(r.output_shape), r.kernel, r.stride, r.params, r.macs] for r in s.rows]
    return totals, pd.DataFrame(rows, columns=TABLE_HEADERS), csv_path, text


@user_errors
def architecture_page(model: str, weights: str, depth: float, current: str):
    """The page's version: the readable table (indented, separators, no pass-through rows) with the
    layer ``current`` highlighted."""
    totals, s, csv_path, text = _answer(model, weights, depth)
    return totals, styled(page_frame(s.rows), current), csv_path, text


def _answer(model, weights, depth):
    used = explore.weights_used(model, weights)  # the model architecture() uses next (cached)
    s = explore.architecture(model, weights, whole(depth, "Depth"))
    macs_unit, macs = explore.readable_macs(s.total_macs)
    totals = (
        f"**Input** {'×'.join(map(str, s.input_size))} · **parameters** {s.total_params:,} "
        f"({s.trainable_params:,} trainable, {s.non_trainable_params:,} non-trainable) · "
        f"**MACs** {macs:.2f} {macs_unit} · **estimated memory** {s.total_mb:.1f} MB "
        f"(input {s.input_mb:.2f} + forward/backward {s.forward_backward_mb:.1f} + params {s.params_mb:.1f})"
        f"\n\n{weights_used(used)}"
    )
    csv_path = OUTPUTS.write(f"{model}-architecture.csv", s.to_csv().encode())
    return totals, s, csv_path, s.to_text()


def _shape(shape) -> str:
    return "×".join(map(str, shape))


def page_frame(rows) -> pd.DataFrame:
    """The page's rows: pass-through modules left out, each name indented by its nesting depth."""
    kept = [r for r in rows if r.type not in PASS_THROUGH]
    return pd.DataFrame(
        [[INDENT * (r.depth - 1) + r.name, r.type, _shape(r.output_shape), r.kernel, r.stride, r.params, r.macs] for r in kept],
        columns=TABLE_HEADERS,
    )


def _thousands(value) -> str:
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def styled(frame: pd.DataFrame, current: str | None):
    """``frame`` with thousands separators and the rows of layer ``current`` highlighted (a Styler:
    the page shows its display values, the data stays numbers)."""
    frame = frame.copy() if frame is not None else pd.DataFrame(columns=TABLE_HEADERS)
    names = frame["layer"].astype(str).str.strip() if "layer" in frame else pd.Series(dtype=str)
    marked = set(names.index[names == current]) if current else set()
    style = frame.style.format({c: _thousands for c in ("params", "MACs") if c in frame})
    return style.apply(lambda row: [HIGHLIGHT if row.name in marked else ""] * len(row), axis=1)


@dataclass
class ArchitectureTab(Refresh):
    table: gr.Dataframe
    opens: gr.Radio  # which view a row click opens
    note: gr.Markdown  # what the last row click did (or why it could not)


def build(state: PageState, current: gr.Textbox) -> ArchitectureTab:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh.
    ``current`` holds the layer open in Feature maps: its row is highlighted."""
    model, weights = state.model, state.weights
    depth = gr.Slider(1, explore.MAX_DEPTH, value=3, step=1, label="Depth (1 = top-level blocks)", elem_id="arch-depth")
    totals = gr.Markdown(elem_id="arch-totals", label="totals")
    with gr.Row(equal_height=True):
        opens = gr.Radio(OPENS, value="feature-maps", label="A row click opens the layer in", scale=2, elem_id="arch-opens")
        note = gr.Markdown(ROW_HINT, elem_id="arch-link")
    table = gr.Dataframe(
        headers=TABLE_HEADERS, interactive=False, max_height=520, elem_id="arch-table", label="layers",
        show_search="search",
    )
    csv_file = gr.File(label="Download CSV", elem_id="arch-csv")
    with gr.Accordion("Text summary (torchinfo style)", open=False):
        text = gr.Code(language=None, label="Summary", elem_id="arch-text")
    outputs = [totals, table, csv_file, text]
    api_only = gr.Button(visible=False)  # /architecture: the library's rows as they are
    api_only.click(architecture, [model, weights, depth], outputs, concurrency_id=WORK, api_name="architecture")
    io = dict(inputs=[model, weights, depth, current], outputs=outputs, concurrency_id=WORK)
    # .change: dragging, typing a number (Enter or not) and any reset all apply; only the last pending runs
    depth.change(architecture_page, **io, trigger_mode="always_last", api_visibility="private")
    # the Feature maps layer changed: the table again from the (cached) summary, never from the page's copy of it,
    # which may be the last model's (a model switch changes both; a reply with the old rows could land last)
    current.change(architecture_page, **io, trigger_mode="always_last", api_visibility="private")
    return ArchitectureTab(architecture_page, io, table, opens, note)
