"""The ``cnnviz`` command and ``python app.py``: one parser, the flags, the environment variables Gradio and
Spaces use, and the package's declared entry point."""
from __future__ import annotations

import ast
import fnmatch
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from cnnviz import cli, loading
from cnnviz.errors import InvalidOptionError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_serve_on_loopback_7860(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = cli.parse_serve_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)


def test_environment_and_flags(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    assert (cli.parse_serve_args([]).host, cli.parse_serve_args([]).port) == ("0.0.0.0", 8080)
    args = cli.parse_serve_args(["--host", "127.0.0.2", "--port", "9000", "--share", "--device", "cpu"])
    assert (args.host, args.port, args.share, args.device) == ("127.0.0.2", 9000, True, "cpu")


def test_the_subcommand_takes_the_same_flags(monkeypatch):
    monkeypatch.delenv("CNNVIZ_MCP", raising=False)
    flags = ["--host", "127.0.0.2", "--port", "9000", "--share", "--device", "cpu", "--mcp"]
    from_app = vars(cli.parse_serve_args(flags))
    from_command = vars(cli.build_parser().parse_args(["serve", *flags]))
    assert from_command.pop("command") == "serve" and from_command.pop("run") is cli.serve_command
    assert from_command == from_app


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_requested_without_cuda_is_refused_plainly():
    with pytest.raises(SystemExit, match="no CUDA device"):
        cli.serve_main(["--device", "cuda"])
    with pytest.raises(SystemExit, match="no CUDA device"):
        cli.main(["serve", "--device", "cuda"])
    with pytest.raises(InvalidOptionError, match="no CUDA device"):
        loading.resolve_device("cuda")
    assert loading.resolve_device("auto") == torch.device("cpu")


def test_mcp_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("CNNVIZ_MCP", raising=False)
    assert cli.parse_serve_args([]).mcp is False and cli.parse_serve_args(["--mcp"]).mcp is True
    for value, on in (("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("off", False)):
        monkeypatch.setenv("CNNVIZ_MCP", value)
        assert cli.parse_serve_args([]).mcp is on, value


def _help(*command: str) -> str:
    done = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_help_of_app_py_and_of_the_command_agree():
    """``python app.py --help`` and ``python -m cnnviz serve --help`` (the console script's very function)
    say the same but for the program's name; ``cnnviz --help`` lists the serve command."""
    app_help = _help("app.py")
    serve_help = _help("-m", "cnnviz", "serve")
    assert app_help.startswith("usage: app.py ") and serve_help.startswith("usage: cnnviz serve ")
    assert "--port PORT" in serve_help and "--mcp" in serve_help
    normalised = [" ".join(text.replace(prog, "PROG").split()) for text, prog in
                  ((app_help, "app.py"), (serve_help, "cnnviz serve"))]
    assert normalised[0] == normalised[1]
    top = cli.build_parser().format_help()
    assert top.startswith("usage: cnnviz ") and "serve" in top


def test_the_package_declares_the_console_script_and_its_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"] == {"cnnviz": "cnnviz.cli:main"}
    assert (ROOT / "cnnviz" / "py.typed").exists()
    assert {"py.typed", "__init__.pyi"} <= set(project["tool"]["setuptools"]["package-data"]["cnnviz"])
    # the stub is the list `import cnnviz` loads from: nothing may leave it out of the package or of git
    excluded = project["tool"]["setuptools"].get("exclude-package-data", {})
    assert not any(fnmatch.fnmatch("__init__.pyi", pattern) for key in ("cnnviz", "*") for pattern in excluded.get(key, []))
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "cnnviz/__init__.pyi"], cwd=ROOT, capture_output=True)
    assert ignored.returncode != 0, ".gitignore leaves out cnnviz/__init__.pyi"
    # packages are listed by name (examples/ is mapped in as cnnviz.examples): none may be left out
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "cnnviz").rglob("__init__.py")}
    assert on_disk <= set(project["tool"]["setuptools"]["packages"])
    # the Space installs requirements.txt: the package's dependencies are the very same pins
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert sorted(project["project"]["dependencies"]) == sorted(pins)


def test_import_cnnviz_loads_no_framework_and_each_public_name_on_first_use():
    """``import cnnviz`` (what ``cnnviz --help`` and ``python app.py --help`` pay) imports neither torch nor
    gradio; a library module that shares a public function's name (``attribution``, ``intervene``), loaded
    first, does not hide the function; every name the stub lists is the very object of its module."""
    probe = (
        "import sys, cnnviz\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'gradio', 'ray') if m in sys.modules))\n"
        "import cnnviz.attribution, cnnviz.intervene\n"
        "print(cnnviz.attribution.__module__, cnnviz.intervene.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "cnnviz.explore.attributions cnnviz.explore.interventions"]

    import cnnviz

    stub = ast.parse((ROOT / "cnnviz" / "__init__.pyi").read_text(encoding="utf-8"))
    listed = {alias.name: f"cnnviz.{node.module}" for node in stub.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert sorted(listed) == cnnviz.__all__ == sorted(dir(cnnviz))
    for name, module in listed.items():
        assert getattr(cnnviz, name) is getattr(importlib.import_module(module), name), name
