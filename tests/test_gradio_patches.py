"""Each reach into Gradio's internals (cnnviz/ui/gradio_patches.py) against the installed Gradio: the private
name exists with the signature the patch wraps, and the patch takes effect. A Gradio upgrade that moves one
fails here, by name, instead of silently dropping a guard (parameter checks, per-client limits, stop checks,
the API page's documentation)."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import gradio as gr
import pytest
from fastapi import HTTPException
from gradio.context import LocalContext
from gradio.queueing import Event

from cnnviz.ui import gradio_patches
from tests.fixtures.loop import run_coroutine


def _demo(blocks_class=gr.Blocks, document=None, **kwargs):
    """A one-endpoint app (``/echo``); ``document(box)`` runs inside its Blocks, as the app's shell does."""
    with blocks_class(**kwargs) as demo:
        box = gr.Dropdown(["a"], value="a", allow_custom_value=True)
        out = gr.Textbox()
        box.change(lambda text: text, box, out, api_name="echo")
        if document:
            document(box)
    return demo, box


def test_blocks_preprocess_data_is_the_method_checked_blocks_overrides():
    params = list(inspect.signature(gr.Blocks.preprocess_data).parameters)
    assert params[:5] == ["self", "block_fn", "inputs", "state", "explicit_call"], params
    assert inspect.iscoroutinefunction(gr.Blocks.preprocess_data)
    seen = []

    def check(block_fn, inputs, state):
        seen.append((block_fn.api_name, list(inputs)))
        raise gr.Error("checked first")

    demo, _ = _demo(gradio_patches.CheckedBlocks, check_call=check)
    block_fn = next(fn for fn in demo.fns.values() if fn.api_name == "echo")
    with pytest.raises(gr.Error, match="checked first"):
        run_coroutine(demo.preprocess_data(block_fn, ["x"], None))
    assert seen == [("echo", ["x"])]


def test_queue_push_is_wrapped_and_refuses_with_the_sentence():
    demo, _ = _demo()
    demo.queue()
    original = demo._queue.push
    assert list(inspect.signature(original).parameters) == ["body", "request", "username"]
    assert isinstance(demo._queue.event_ids_to_events, dict)
    asked = []

    def refuse(body, request, alive):
        asked.append((body.session_hash, alive))
        return "Too many requests from you at once."

    gradio_patches.limit_queue(demo, refuse)
    assert demo._queue.push != original and demo._queue.push.__wrapped__ == original
    with pytest.raises(HTTPException) as refused:
        run_coroutine(demo._queue.push(SimpleNamespace(session_hash="page"), SimpleNamespace(client=None), None))
    assert refused.value.status_code == 429 and refused.value.detail == "Too many requests from you at once."
    assert asked == [("page", [])]


def test_the_event_fields_the_app_reads_exist():
    demo, _ = _demo()
    fn = next(iter(demo.fns.values()))
    event = Event("page", fn, SimpleNamespace(client=SimpleNamespace(host="10.0.0.1")), None)
    for name in gradio_patches.EVENT_FIELDS:
        assert hasattr(event, name), f"gradio.queueing.Event has no {name!r} any more"
    assert event.alive is True and event.session_hash == "page" and event.fn is fn
    assert isinstance(event.enqueue_time, float)


def test_current_event_and_client_read_gradios_context():
    assert gradio_patches.current_event() == (None, None)  # outside a queued call
    assert gradio_patches.current_client_host() is None
    demo, _ = _demo()
    demo.queue()
    fn = next(iter(demo.fns.values()))
    request = SimpleNamespace(client=SimpleNamespace(host="10.0.0.1"))
    event = Event("page", fn, request, None)
    demo._queue.event_ids_to_events[event._id] = event
    for name in ("blocks", "event_id", "request"):
        assert isinstance(getattr(LocalContext, name, None), type(LocalContext.blocks)), f"LocalContext.{name} is gone"
    tokens = [LocalContext.blocks.set(demo), LocalContext.event_id.set(event._id), LocalContext.request.set(request)]
    try:
        assert gradio_patches.current_event() == (demo._queue, event)
        assert gradio_patches.queued_events(demo._queue) == [event]
        assert gradio_patches.current_client_host() == "10.0.0.1"
    finally:
        for var, token in zip((LocalContext.blocks, LocalContext.event_id, LocalContext.request), tokens):
            var.reset(token)


def test_the_api_page_reads_the_documentation_set_on_a_component():
    demo, _ = _demo(document=lambda box: gradio_patches.document_as_text(box, "Any text at all.", "example text"))
    parameter = demo.get_api_info()["named_endpoints"]["/echo"]["parameters"][0]
    assert parameter["type"] == {"type": "string", "description": "Any text at all.",
                                 "additional_description": "Any text at all."}
    assert parameter["example_input"] == "example text"
    demo, _ = _demo(document=lambda box: gradio_patches.document_example(box, {"path": "a.txt"}, "a.txt"))
    assert demo.get_api_info()["named_endpoints"]["/echo"]["parameters"][0]["example_input"] == {"path": "a.txt"}


def test_upload_folder_is_gradios():
    assert gradio_patches.upload_folder() == gr.utils.get_upload_folder()


def test_no_other_module_reaches_into_gradio():
    """The internals named above are used nowhere but gradio_patches.py (else an upgrade could break a
    place this file does not check)."""
    from pathlib import Path

    internals = ("._queue", "LocalContext", "preprocess_data", ".api_info =", ".example_payload =",
                 "gradio.utils", "gradio import utils", "event_ids_to_events")
    ui = Path(gradio_patches.__file__).parent
    for path in sorted(ui.glob("*.py")):
        if path.name == "gradio_patches.py":
            continue
        text = path.read_text(encoding="utf-8")
        found = [name for name in internals if name in text]
        assert not found, f"ui/{path.name} uses Gradio's {found}: put it in gradio_patches.py and its test here"
