"""Collections by name, so that no request ever names a server path.

Two kinds: the operator's folders (``cnnviz serve --data NAME=DIR``, or ``CNNVIZ_COLLECTIONS``:
``NAME=DIR`` pairs separated by ``os.pathsep``), and zips uploaded to the page, extracted safely
(:func:`cnnviz.dataset.files.extract_zip`) into a folder named by the zip's content digest and named
``upload/<digest>`` (unguessable, like an uploaded checkpoint's name: whoever holds the name can use it).
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from ..errors import CollectionError, did_you_mean, quoted
from . import files

ENV = "CNNVIZ_COLLECTIONS"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")  # a name a page can show and a link can carry
UPLOAD_PREFIX = "upload/"

_UPLOADS: dict[str, Path] = {}  # name -> extracted folder, in this process
_LOCK = threading.Lock()


def parse(spec: str) -> tuple[str, Path]:
    """``"NAME=DIR"`` (or a bare ``DIR``: its folder name) → (name, folder). Raises CollectionError."""
    name, _, folder = spec.partition("=") if "=" in spec else ("", "", spec)
    path = Path(folder).expanduser()
    name = name.strip() or path.resolve().name
    if not NAME.match(name):
        raise CollectionError(f"The collection name {quoted(name)} must be 1–64 letters, digits, spaces, dots, dashes or "
                              "underscores, starting with a letter or digit.")
    if not path.is_dir():
        raise CollectionError(f"The collection {quoted(name)}: {quoted(str(folder))} is not a folder.")
    return name, path.resolve()


def operator_collections() -> dict[str, Path]:
    """The operator's collections ({name: folder}), in the order given."""
    found: dict[str, Path] = {}
    for spec in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(os.pathsep))):
        name, path = parse(spec)
        found[name] = path
    return found


def names() -> list[str]:
    """Every collection a page may choose: the operator's, then uploads (those of this process)."""
    with _LOCK:
        uploads = list(_UPLOADS)
    return [*operator_collections(), *uploads]


def folder(name: str) -> Path:
    """The folder of collection ``name``. Raises CollectionError naming the valid names."""
    operator = operator_collections()
    if name in operator:
        return operator[name]
    with _LOCK:
        if name in _UPLOADS:
            return _UPLOADS[name]
    known = names()
    listed = ", ".join(quoted(n) for n in known[:10]) if known else "none (the server was started without --data; upload a .zip)"
    raise CollectionError(f"No collection named {quoted(name)}. Collections here: {listed}.{did_you_mean(str(name), known)}")


def add_zip(zip_path: str | os.PathLike, parent: str | os.PathLike, limits: files.ZipLimits = files.ZipLimits()) -> str:
    """Extract an uploaded zip under ``parent`` (once per content) and name it; returns ``upload/<digest>``."""
    digest = files.file_digest(zip_path)[:24]
    name = f"{UPLOAD_PREFIX}{digest}"
    dest = Path(parent) / digest
    with _LOCK:
        if name in _UPLOADS and _UPLOADS[name].is_dir():
            return name
    if not dest.is_dir() or not any(dest.iterdir()):
        files.extract_zip(zip_path, dest, limits)
    files.list_collection(dest)  # refuses a zip without a single image, with its sentence
    with _LOCK:
        _UPLOADS[name] = dest
    return name
