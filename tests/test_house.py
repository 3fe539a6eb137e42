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
        # besides explore: the process (server), who still waits for an answer (cancel: an ASGI middleware and
        # the open streams it counts) and the error family
        assert library <= {"explore", "server", "cancel", "errors"}, f"ui/{path.name} reaches into {library}"
    if path.name == "render.py":
        assert not {n for n in names if n.split(".")[0] in ("torch", "torchvision", "timm")}, names


def test_the_rules_see_imports():
    """The checker itself: it finds the relative imports of a UI module and the library's gradio-free files."""
    assert "cnnviz.explore" in imported(PACKAGE / "ui" / "filters.py")
    assert "cnnviz.ui.common" in imported(PACKAGE / "ui" / "filters.py")
    assert any(n.startswith("gradio") for n in imported(PACKAGE / "ui" / "__init__.py"))


def test_per_model_caches_live_on_the_loaded_model():
    """One owner for every per-model cache: ``LoadedModel.memo``. No module keeps its own table keyed by
    loaded models (those outlived nothing, but each had its own lock, bound and eviction)."""
    for path in FILES:
        assert "WeakKeyDictionary" not in path.read_text(encoding="utf-8"), f"{path.name} keeps its own per-model cache"


def test_a_models_derived_data_goes_with_it(coffee):
    import gc
    import weakref

    import cnnviz
    from cnnviz import loading

    loading.clear_cache()
    loaded = cnnviz.load_model("resnet18", "random")
    cnnviz.feature_maps("resnet18", coffee, "layer1", "random")
    cnnviz.architecture("resnet18", "random", 2)
    cnnviz.filter_grid("resnet18", "random", layer="layer1.0.conv1")
    assert {"layers.listing", "receptive.geometry", "summary.depth2", "filters.cache", "preprocess.inputs",
            "activations.predictions"} <= set(loaded.derived)
    listing = weakref.ref(loaded.derived["layers.listing"])
    gone = weakref.ref(loaded)
    del loaded
    loading.clear_cache()
    gc.collect()
    assert gone() is None and listing() is None  # nothing else held the model or what was computed from it
