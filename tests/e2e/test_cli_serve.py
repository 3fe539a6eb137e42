"""``python -m cnnviz serve`` (the console script's own function) serves the app, as ``python app.py`` does."""
from __future__ import annotations

import urllib.request

import pytest

from .conftest import stop_process

pytestmark = pytest.mark.e2e


def test_the_command_serves_the_page_and_stops_on_sigterm(start):
    app = start(entry=("-m", "cnnviz", "serve", "--device", "cpu")).serving()
    with urllib.request.urlopen(app.url, timeout=30) as response:
        page = response.read().decode("utf-8", errors="replace")
    assert response.status == 200 and "CNN Explorer" in page
    stop_process(app.proc)  # SIGTERM: the server tidies up and exits
    assert app.proc.returncode == 0, app.output()[-2000:]
