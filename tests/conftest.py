from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
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
