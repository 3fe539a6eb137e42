from __future__ import annotations

import os
from pathlib import Path

import pytest

# `python -m pytest` (the README's command) puts the working tree first on sys.path: its cnnviz is tested.
ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("CNNVIZ_DEVICE", "cpu")
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may download weights: the app must treat the network as absent."""
    monkeypatch.setenv("CNNVIZ_OFFLINE", "1")


@pytest.fixture
def coffee() -> Path:
    return EXAMPLES / "coffee.png"


@pytest.fixture(autouse=True, scope="module")
def _modules_forgotten():
    """Modules a test file gives the library (``from_module``) are forgotten after it: the first one given
    is the app's startup model, so one left behind would open every later test's app on it."""
    yield
    from cnnviz import loading

    loading.clear_modules()
