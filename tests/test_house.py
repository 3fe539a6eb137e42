"""The house rules of design.md, read from the imports themselves (every ``import`` statement, inside
functions and ``TYPE_CHECKING`` blocks too), with no exceptions listed:

- no import cycle among the package's modules;
- the dependency direction ``ui`` → ``explore`` → library: the library imports neither the facade nor the UI,
  the facade not the UI, and the UI nothing of the library but ``explore`` (and the process: ``server``,
  ``cancel``, the error family ``errors``);
- only ``cnnviz/ui/`` imports gradio; ``render`` imports no models; no tab imports another (each imports only
  ``ui/common.py`` and ``ui/gradio_patches.py`` of the UI; the shell composes them);
- no private name (``_x``) of one module used in another.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cnnviz"
UI_MAY_USE = {"cnnviz.explore", "cnnviz.server", "cnnviz.cancel", "cnnviz.errors"}
UI_SHARED = ("common", "gradio_patches")  # what every tab may import of the UI
APP = {"cnnviz.cli", "cnnviz.__main__"}  # the command line: starts the UI, so it may import anything


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Imports:
    """What each module of a package imports from the package, and which private names it reaches for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
        self.edges: dict[str, set[str]] = {}
        self.external: dict[str, set[str]] = {}
        self.private: dict[str, set[str]] = {}
        for name, path in self.paths.items():
            self._read(name, path)
        for stub in sorted(root.rglob("*.pyi")):  # a lazy package's imports are in its stub (cnnviz/__init__.pyi)
            name = module_name(stub, root)
            edges, external, private = self.edges[name], self.external[name], self.private[name]
            self._read(name, stub)
            self.edges[name] |= edges
            self.external[name] |= external
            self.private[name] |= private

    def _resolve(self, name: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = name.split(".") if self.paths[name].name == "__init__.py" else name.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def _read(self, name: str, path: Path) -> None:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges, external, private = set(), set(), set()
        aliases: dict[str, str] = {}  # local name -> package module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    (edges if alias.name.startswith(self.root.name + ".") else external).add(alias.name)
                    if alias.asname and alias.name in self.paths:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                module = self._resolve(name, node)
                if not module.startswith(self.root.name):
                    external.add(module)
                    continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    if sub in self.paths:  # from . import activations
                        edges.add(sub)
                        aliases[alias.asname or alias.name] = sub
                    else:  # from .activations import capture
                        edges.add(module)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.add(f"{module}.{alias.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.add(f"{aliases[node.value.id]}.{node.attr}")
        edges.discard(name)
        self.edges[name], self.external[name], self.private[name] = edges, external, private

    def cycles(self) -> list[list[str]]:
        """Every import cycle, each as the path that closes it."""
        found, state = [], {}

        def visit(node: str, trail: list[str]) -> None:
            state[node] = "open"
            for nxt in sorted(self.edges.get(node, ())):
                if nxt not in self.paths:
                    continue
                if state.get(nxt) == "open":
                    found.append(trail[trail.index(nxt):] + [nxt])
                elif nxt not in state:
                    visit(nxt, trail + [nxt])
            state[node] = "done"

        for node in sorted(self.paths):
            if node not in state:
                visit(node, [node])
        return found


def layer_of(name: str) -> str:
    root = name.split(".")[0]
    if name in APP:
        return "app"
    if name.startswith(f"{root}.ui"):
        return "ui"
    if name.startswith(f"{root}.explore"):
        return "facade"
    return "api" if name == root else "library"


def broken_rules(imports: Imports) -> list[str]:
    """Every broken house rule, one sentence each (empty: the house stands)."""
    root = imports.root.name
    broken = [f"import cycle: {' -> '.join(cycle)}" for cycle in imports.cycles()]
    for name in sorted(imports.paths):
        layer, edges = layer_of(name), imports.edges[name]
        gradio = {e for e in imports.external[name] if e.split(".")[0] in ("gradio", "gradio_client")}
        if gradio and layer != "ui":
            broken.append(f"{name} imports {sorted(gradio)}: only {root}.ui may import gradio")
        for target in sorted(edges):
            to = layer_of(target)
            if layer == "library" and to in ("facade", "ui", "api", "app"):
                broken.append(f"{name} (library) imports {target}")
            elif layer == "facade" and to in ("ui", "api", "app"):
                broken.append(f"{name} (facade) imports {target}")
            elif layer == "api" and to == "ui":  # cnnviz.launch is the app's own (cli), which starts the UI
                broken.append(f"{name} (the Python API) imports {target}")
            elif layer == "ui" and to != "ui" and target not in {m.replace("cnnviz", root) for m in UI_MAY_USE}:
                broken.append(f"{name} (UI) reaches into {target}: the UI calls the library through explore")
            elif (layer == "ui" and to == "ui" and name != f"{root}.ui"
                  and target not in {f"{root}.ui.{shared}" for shared in UI_SHARED}):
                broken.append(f"{name} imports {target}: no tab imports another (the shell composes them)")
        broken += [f"{name} uses {reach}, a private name of another module" for reach in sorted(imports.private[name])
                   if not reach.startswith(name + ".")]
        if name == f"{root}.render" and {e for e in imports.external[name] if e.split(".")[0] in ("torch", "torchvision", "timm")}:
            broken.append(f"{name} imports models: rendering is pure numpy")
    return broken


def test_the_house_rules_hold():
    assert broken_rules(Imports(PACKAGE)) == []


PLANTED = {
    "__init__.py": "from .explore import view\n",
    "errors.py": "",
    "loading.py": "from . import layers\nclass Loaded: pass\n",
    "layers.py": "from .loading import Loaded\n",  # a cycle
    "render.py": "import torch\n",  # models in the renderer
    "summary.py": "from . import layers\nx = layers._secret\nfrom .explore import view\n",  # private reach, upward
    "explore/__init__.py": "from .maps import view\n",
    "explore/maps.py": "import gradio\nfrom ..loading import _cache\ndef view(): pass\n",
    "ui/__init__.py": "import gradio\nfrom .. import explore, loading\nfrom . import common, maps\n",
    "ui/common.py": "import gradio\n",
    "ui/maps.py": "from . import common, filters\n",  # a tab importing another
    "ui/filters.py": "from .common import x\n",
}


def test_the_checker_finds_each_kind_of_broken_rule(tmp_path):
    root = tmp_path / "pkg"
    for relative, text in PLANTED.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    broken = broken_rules(Imports(root))
    assert any(b.startswith("import cycle:") and "pkg.layers" in b and "pkg.loading" in b for b in broken), broken
    assert "pkg.render imports models: rendering is pure numpy" in broken
    assert "pkg.summary uses pkg.layers._secret, a private name of another module" in broken
    assert "pkg.explore.maps uses pkg.loading._cache, a private name of another module" in broken
    assert "pkg.summary (library) imports pkg.explore" in broken
    assert "pkg.explore.maps imports ['gradio']: only pkg.ui may import gradio" in broken
    assert "pkg.ui (UI) reaches into pkg.loading: the UI calls the library through explore" in broken
    assert "pkg.ui.maps imports pkg.ui.filters: no tab imports another (the shell composes them)" in broken
    assert not any(b.startswith(("pkg.ui imports", "pkg.ui.filters", "pkg.ui.common")) for b in broken), broken  # gradio in the UI is the rule, not a break


def test_the_checker_reads_every_module_and_its_relative_imports():
    imports = Imports(PACKAGE)
    assert {"cnnviz.explore", "cnnviz.explore.maps", "cnnviz.ui.filters", "cnnviz.loading"} <= set(imports.paths)
    assert {"cnnviz.explore", "cnnviz.ui.common"} <= imports.edges["cnnviz.ui.filters"]
    assert "cnnviz.loading" in imports.edges["cnnviz.preprocess"]  # a TYPE_CHECKING import counts too
    assert "gradio" in imports.external["cnnviz.ui"]


def test_per_model_caches_live_on_the_loaded_model():
    """One owner for every per-model cache: ``LoadedModel.memo``. No module keeps its own table keyed by
    loaded models (those outlived nothing, but each had its own lock, bound and eviction)."""
    for path in sorted(PACKAGE.rglob("*.py")):
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
    assert {"layers.listing", "summary.depth2", "filters.cache", "preprocess.inputs", "activations.predictions"} <= set(loaded.derived)
    assert any(key.startswith("receptive.geometry.") for key in loaded.derived)  # one per set of layers
    listing = weakref.ref(loaded.derived["layers.listing"])
    gone = weakref.ref(loaded)
    del loaded
    loading.clear_cache()
    gc.collect()
    assert gone() is None and listing() is None  # nothing else held the model or what was computed from it
