"""app.py: flags and the environment variables Gradio and Spaces use."""
from __future__ import annotations

import pytest
import torch

import app
from cnnviz import loading
from cnnviz.errors import InvalidOptionError


def test_defaults_serve_on_loopback_7860(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)


def test_environment_and_flags(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    assert (app.parse_args([]).host, app.parse_args([]).port) == ("0.0.0.0", 8080)
    args = app.parse_args(["--host", "127.0.0.2", "--port", "9000", "--share", "--device", "cpu"])
    assert (args.host, args.port, args.share, args.device) == ("127.0.0.2", 9000, True, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_requested_without_cuda_is_refused_plainly():
    with pytest.raises(SystemExit, match="no CUDA device"):
        app.main(["--device", "cuda"])
    with pytest.raises(InvalidOptionError, match="no CUDA device"):
        loading.resolve_device("cuda")
    assert loading.resolve_device("auto") == torch.device("cpu")


def test_mcp_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("CNNVIZ_MCP", raising=False)
    assert app.parse_args([]).mcp is False and app.parse_args(["--mcp"]).mcp is True
    for value, on in (("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("off", False)):
        monkeypatch.setenv("CNNVIZ_MCP", value)
        assert app.parse_args([]).mcp is on, value
