"""The Architecture tab: per-layer table, totals, CSV and torchinfo-style text; endpoint ``/architecture``."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import explore
from .common import OUTPUTS, WORK, Refresh, user_errors, weights_used, whole

TABLE_HEADERS = ["layer", "type", "output shape", "kernel", "stride", "params", "MACs"]


@user_errors
def architecture(model: str, weights: str = "pretrained", depth: float = 3):
    """Per-layer table, totals, CSV file and text summary of a model.

    Args:
        model: a curated key, a torchvision name or timm/<name>.
        weights: "pretrained" or "random".
        depth: nesting depth of the rows, 1 (top-level blocks) to 8.
    """
    used = explore.weights_used(model, weights)  # the model architecture() uses next (cached)
    s = explore.architecture(model, weights, whole(depth, "Depth"))
    macs_unit, macs = explore.readable_macs(s.total_macs)
    rows = [[r.name, r.type, "×".join(map(str, r.output_shape)), r.kernel, r.stride, r.params, r.macs] for r in s.rows]
    totals = (
        f"**Input** {'×'.join(map(str, s.input_size))} · **parameters** {s.total_params:,} "
        f"({s.trainable_params:,} trainable, {s.non_trainable_params:,} non-trainable) · "
        f"**MACs** {macs:.2f} {macs_unit} · **estimated memory** {s.total_mb:.1f} MB "
        f"(input {s.input_mb:.2f} + forward/backward {s.forward_backward_mb:.1f} + params {s.params_mb:.1f})"
        f"\n\n{weights_used(used)}"
    )
    csv_path = OUTPUTS.write(f"{model}-architecture.csv", s.to_csv().encode())
    return totals, pd.DataFrame(rows, columns=TABLE_HEADERS), csv_path, s.to_text()


def build(model: gr.Dropdown, weights: gr.Radio) -> Refresh:
    """The tab's components and its own events (inside the current ``gr.Tab``); returns its refresh."""
    depth = gr.Slider(1, explore.MAX_DEPTH, value=3, step=1, label="Depth (1 = top-level blocks)")
    totals = gr.Markdown(elem_id="arch-totals")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, max_height=520, elem_id="arch-table")
    csv_file = gr.File(label="Download CSV", elem_id="arch-csv")
    with gr.Accordion("Text summary (torchinfo style)", open=False):
        text = gr.Code(language=None, label="Summary", elem_id="arch-text")
    io = dict(inputs=[model, weights, depth], outputs=[totals, table, csv_file, text], concurrency_id=WORK)
    depth.release(architecture, **io, api_name="architecture")
    return Refresh(architecture, io)
