"""Issue 17 §7, the items a unit test can hold: what the app says at start-up and in its help."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cnnviz import explore

ROOT = Path(__file__).resolve().parents[1]


def test_the_offline_banner_says_so_once():
    """The fallback sentence ends in "…, so the model has random weights."; the banner goes on without a second "So"."""
    opened = explore.startup_model()
    assert opened.notice, "offline, the default model has no pretrained weights: the banner must say so"
    assert len(re.findall(r"\bso\b", opened.notice, flags=re.IGNORECASE)) == 1, opened.notice
    assert opened.model in opened.notice or "opened on" in opened.notice


def test_help_and_readme_name_the_same_mcp_url():
    said = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    urls = set(re.findall(r"/gradio_api/mcp/\S*", " ".join(said.split())))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert urls == {"/gradio_api/mcp/"}, urls
    assert "http://127.0.0.1:7860/gradio_api/mcp/" in readme and "/gradio_api/mcp/sse" not in readme
    doc = (ROOT / "app.py").read_text(encoding="utf-8").split('"""')[1]
    assert "/gradio_api/mcp/sse" not in doc and "gradio_api/mcp/" in doc


def test_the_weights_radio_says_random_after_a_fallback():
    """Offline, pretrained ResNet-18 falls back to random weights: the radio's choice says so (its value,
    the user's choice, stays "pretrained"); with weights that did load it says "pretrained" again."""
    from cnnviz import ui

    *_, radio = ui.model_picked("resnet18", "pretrained", "", "")
    labels = dict((value, label) for label, value in radio.choices)
    assert radio.value == "pretrained" and "random weights" in labels["pretrained"] and labels["random"] == "random"
    *_, radio = ui.model_picked("timm/tf_efficientnet_lite0", "pretrained", "", "")  # bundled: really pretrained
    assert dict((value, label) for label, value in radio.choices)["pretrained"] == "pretrained"
