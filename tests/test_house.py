"""The house rules of design.md, checked on the source: only ``cnnviz/ui/`` (and app.py) import gradio,
the UI calls nothing of the library but ``explore`` (and ``server`` for the process), ``render`` imports
no models, and nothing imports the UI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnnviz"


def imported(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against the cnnviz package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[:-1]  # the file's package
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names if not node.module)
    return names


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_rules(path):
    names = imported(path)
    in_ui = path.parent.name == "ui"
    gradio = {n for n in names if n.split(".")[0] in ("gradio", "gradio_client")}
    assert in_ui or not gradio, f"{path.name} imports {gradio}: only cnnviz/ui/ may"
    assert not any(n.startswith("cnnviz.ui") for n in names) or in_ui, f"{path.name} imports the UI"
    if in_ui:
        library = {n.split(".")[1] for n in names if n.startswith("cnnviz.") and not n.startswith("cnnviz.ui")}
        assert library <= {"explore", "server", "errors", "weights"}, f"ui/{path.name} reaches into {library}"
    if path.name == "render.py":
        assert not {n for n in names if n.split(".")[0] in ("torch", "torchvision", "timm")}, names


def test_the_rules_see_imports():
    """The checker itself: it finds the relative imports of a UI module and the library's gradio-free files."""
    assert "cnnviz.explore" in imported(PACKAGE / "ui" / "filters.py")
    assert "cnnviz.ui.common" in imported(PACKAGE / "ui" / "filters.py")
    assert any(n.startswith("gradio") for n in imported(PACKAGE / "ui" / "__init__.py"))
