"""Every place the app reaches into Gradio's internals, in one room.

Gradio has no public hook for what these do; each relies on a private name, a method's signature or an
instance attribute Gradio reads. ``tests/test_gradio_patches.py`` checks each one against the installed
Gradio (the name exists, the signature is the one wrapped, the patch takes effect), so an upgrade that
moves one fails there, loudly, instead of silently dropping a guard:

* :class:`CheckedBlocks` overrides ``Blocks.preprocess_data`` to check every call's parameters first;
* :func:`limit_queue` wraps ``demo._queue.push`` to bound the events one page or one address may hold;
* :func:`current_event` and :func:`current_client_host` read Gradio's ``LocalContext`` (the event and the
  request the current thread serves) and the queue's ``event_ids_to_events``;
* :func:`document_as_text`, :func:`document_example` replace a component's ``api_info``,
  ``example_payload`` and ``example_value`` (what the API page and the MCP schema show);
* :func:`upload_folder` is Gradio's private cache folder when no server folder is known.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import gradio as gr
from fastapi import HTTPException
from gradio import utils as gradio_utils
from gradio.context import LocalContext

# The Queue's and Event's private names the app reads (checked by the test against the installed Gradio).
EVENT_FIELDS = ("alive", "enqueue_time", "_id", "session_hash", "fn", "request")


class CheckedBlocks(gr.Blocks):
    """gr.Blocks that runs ``check_call(block_fn, inputs, state)`` on each call before Gradio's own processing
    (``Blocks.preprocess_data``, private), so that a raw API call with a wrong count or a wrong type gets
    the checker's sentence instead of an empty error."""

    def __init__(self, *args, check_call: Callable[[Any, list, Any], None], **kwargs) -> None:
        self._check_call = check_call
        super().__init__(*args, **kwargs)

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        self._check_call(block_fn, inputs, state)
        return await super().preprocess_data(block_fn, inputs, state, explicit_call)


def limit_queue(demo: gr.Blocks, refuse: Callable[[Any, Any, list], str | None]) -> None:
    """Refuse (HTTP 429 with ``refuse``'s sentence) a new event when ``refuse(body, request, alive)``
    says so; ``alive`` are the events queued or running. Every queued route (``/queue/join``,
    ``/call/<name>``) goes through ``Queue.push``; deciding and pushing happen under one lock.
    Call it after ``demo.queue()``."""
    queue = demo._queue
    push = queue.push
    lock = asyncio.Lock()

    async def limited_push(body, request, username):
        async with lock:
            alive = [e for e in list(queue.event_ids_to_events.values()) if e.alive]
            sentence = refuse(body, request, alive)
            if sentence:
                raise HTTPException(429, detail=sentence)
            return await push(body, request, username)

    limited_push.__wrapped__ = push  # the test sees that the patch took
    queue.push = limited_push


def current_event():
    """(queue, event) of the queued event the current thread serves (Gradio's context), or (None, None)
    outside a queued call; the event is None once the queue has let it go."""
    event_id, blocks = LocalContext.event_id.get(None), LocalContext.blocks.get(None)
    if event_id is None or blocks is None or blocks._queue is None:
        return None, None
    return blocks._queue, blocks._queue.event_ids_to_events.get(event_id)


def queued_events(queue) -> list:
    """The events ``queue`` holds, queued or running (a copy: the queue changes under us)."""
    return list(queue.event_ids_to_events.values())


def current_client_host() -> str | None:
    """The client address of the request being handled (as uvicorn reports it), or None."""
    request = LocalContext.request.get(None)
    client = getattr(request, "client", None) if request is not None else None
    return getattr(client, "host", None)


def upload_folder() -> str:
    """Gradio's upload (cache) folder, as its own routes use it."""
    return gradio_utils.get_upload_folder()


def document_as_text(component: gr.components.Component, description: str, example: str) -> None:
    """Document a Dropdown that takes free text (``allow_custom_value``) as text in the API page and the
    MCP schema: Gradio would list only its current choices (none, for a layer picker before a model)."""
    component.api_info = lambda: {"type": "string", "description": description, "additional_description": description}
    component.example_payload = component.example_value = lambda: example


def document_example(component: gr.components.Component, payload: dict, value: str) -> None:
    """The API page's example for a file parameter: ``payload`` as sent, ``value`` as the page writes it."""
    component.example_payload = lambda: payload
    component.example_value = lambda: value
