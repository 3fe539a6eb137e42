"""The app as an MCP server (``python app.py --mcp``): its tools are the public endpoints, described by
their docstrings' Args, and a client can call one (offline, random weights)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ARTIFACTS, ROOT, _free_port, _wait_until_serving, stop_process

pytestmark = pytest.mark.e2e

PUBLIC = {"architecture", "filters", "feature_maps", "channel", "layer_stats", "activations", "channel_visualization", "attribution",
          "projection", "guided_gradcam", "compare", "load_checkpoint", "atlas", "atlas_job", "dataset_examples", "collection_table",
          "intervene", "channel_importance", "explanation_quality"}


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory):
    """``python app.py --mcp`` on a free loopback port, offline, on the CPU."""
    pytest.importorskip("mcp", reason="gradio[mcp] is not installed (requirements.txt installs it)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "server-mcp.log"
    env = dict(os.environ, CNNVIZ_OFFLINE="1", CNNVIZ_DEVICE="cpu", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio-tmp-mcp")), PYTHONUNBUFFERED="1")
    env.pop("CNNVIZ_MCP", None)
    env.pop("GRADIO_MCP_SERVER", None)
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--device", "cpu", "--mcp"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_until_serving(url, proc, log)
        yield url
    finally:
        stop_process(proc)


def test_schema_lists_the_public_endpoints_with_parameter_descriptions(mcp_url):
    with urllib.request.urlopen(mcp_url + "gradio_api/mcp/schema", timeout=30) as r:
        tools = {tool["name"]: tool for tool in json.load(r)}
    assert PUBLIC <= set(tools)
    assert not {"open_page", "model_picked", "weights_switched", "open_row", "show"} & set(tools)  # page events stay private
    for name, tool in tools.items():
        assert tool["description"] and tool["description"][0].isupper(), name
        properties = tool["inputSchema"]["properties"]
        for parameter, schema in properties.items():
            assert len(schema.get("description", "")) > 10, (name, parameter)  # from the docstring's Args
        models = [p for n, p in properties.items() if n == "model" or n.startswith("model_")]  # compare: model_a, model_b
        if name != "atlas_job":  # the one tool about a job, not a model (it takes the job's id)
            assert models and all("timm/" in p["description"] for p in models), name
    arch = tools["architecture"]["inputSchema"]
    assert arch["required"] == ["model"] and arch["properties"]["weights"]["enum"] == ["pretrained", "random"]
    assert "1 (top-level blocks) to 8" in arch["properties"]["depth"]["description"]


def test_a_client_calls_a_tool_and_gets_the_sentence_for_a_mistake(mcp_url, library):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def call():
        async with streamablehttp_client(mcp_url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                names = {tool.name for tool in (await session.list_tools()).tools}
                good = await session.call_tool("architecture", {"model": "resnet18", "weights": "random", "depth": 1})
                bad = await session.call_tool("architecture", {"model": "resnet5O", "weights": "random", "depth": 1})
                return names, good, bad

    with ThreadPoolExecutor(1) as pool:  # its own event loop: Playwright's sync API may hold this thread's
        names, good, bad = pool.submit(asyncio.run, call()).result()
    assert PUBLIC <= names
    truth = library.architecture("resnet18", "random", 1)
    assert not good.isError and f"**parameters** {truth.total_params:,} " in good.content[0].text
    assert bad.isError and "Unknown model 'resnet5O'" in bad.content[0].text and "resnet50" in bad.content[0].text


def test_a_client_passes_an_image_as_upload_file_to_gradio_does_and_a_target_by_label(mcp_url):
    """What an MCP client sends for an image: the URL ``upload_file_to_gradio`` returns (this app's own
    ``/gradio_api/file=`` URL of the upload). A URL of anywhere else is refused with the sentence; the
    ``target`` parameter takes a label as README says (the schema says text, not an empty-string enum)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    from .conftest import EXAMPLES, Raw

    path = Raw(mcp_url).upload(EXAMPLES / "cat.png")  # what upload_file_to_gradio does, then it returns:
    own_url = f"{mcp_url}gradio_api/file={path}"
    with urllib.request.urlopen(mcp_url + "gradio_api/mcp/schema", timeout=30) as r:
        schema = {tool["name"]: tool for tool in json.load(r)}["attribution"]["inputSchema"]["properties"]
    assert schema["target"].get("type") == "string" and "enum" not in schema["target"], schema["target"]

    async def call():
        async with streamablehttp_client(mcp_url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                cam = await session.call_tool("attribution", {"model": "resnet18", "image": own_url, "target": "tabby",
                                                              "layer": "layer4", "weights": "random"})
                elsewhere = await session.call_tool("attribution", {"model": "resnet18", "weights": "random",
                                                                    "image": "https://evil.example/cat.png"})
                return cam, elsewhere

    with ThreadPoolExecutor(1) as pool:
        cam, elsewhere = pool.submit(asyncio.run, call()).result()
    texts = " ".join(getattr(c, "text", "") for c in cam.content)
    assert not cam.isError, texts
    assert "**tabby** (class 281" in texts and "`layer4`" in texts
    refused = " ".join(getattr(c, "text", "") for c in elsewhere.content)
    assert elsewhere.isError and "must be uploaded to this app first" in refused and "evil.example" not in refused
