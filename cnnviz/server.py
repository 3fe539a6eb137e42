"""The server process: a private temp folder, and a clean exit on signals.

No gradio here (``app.py`` calls these before it imports the UI): the temp folder must be chosen
before gradio is imported, because gradio reads ``GRADIO_TEMP_DIR`` at import time.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable


def private_temp_folder() -> Path:
    """A temp folder of this server's own, set as ``GRADIO_TEMP_DIR`` (uploads, Gradio's cache, our
    output files), created inside the folder ``GRADIO_TEMP_DIR`` named before (else the system's temp
    folder), so no other Gradio app on the host shares it. Removed at exit (:func:`exit_cleanly`)."""
    parent = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="cnnviz-", dir=parent))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def exit_cleanly(folder: Path, close: Callable[[], None], grace_s: float = 3.0) -> None:
    """On SIGINT or SIGTERM: close the server (waiting at most ``grace_s``), remove ``folder``, exit 0.

    The exit skips interpreter teardown (``os._exit``): a forward pass still running in a worker
    thread would otherwise abort the process ("terminate called without an active exception")."""

    def stop(signum: int, _frame) -> None:
        print(f"{signal.Signals(signum).name}: stopping the server.", flush=True)
        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        closer.join(grace_s)
        shutil.rmtree(folder, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def wait_forever() -> None:
    """Keep the main thread alive (signals are handled there) while the server runs in its threads."""
    while True:
        time.sleep(3600)
