"""The embedded database of dataset examples: one SQLite file under ``CNNVIZ_DATA_DIR``.

Why SQLite (not DuckDB): the job writes small transactions often (a batch's folded state and the images
it did) and a page reads one channel's row; that is SQLite's work (row store, one file, in the standard
library, crash-safe). DuckDB is made for scans over columns, which nothing here needs.

Crash safety: write-ahead log (``journal_mode=WAL``); each checkpoint of a job (its layers' states and the
images they now include) is one transaction, so a process killed at any moment leaves the last committed
checkpoint, and the job resumes from it. ``synchronous=NORMAL``: a power cut may lose the last
checkpoints (the job then redoes them), never corrupt the file.

Tables: ``images`` (a collection's files: path, size, mtime, content digest, label; the digest is
recomputed only when size or mtime changed), ``skipped`` (files a job could not read, with the reason),
``atlases`` (one per model, weights, collection and layer: the folded state as one ``.npz`` blob) and
``atlas_images`` (which images each atlas includes, by content digest).
"""
from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .accumulate import LayerAtlas

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,
    label TEXT,
    UNIQUE (collection, path)
);
CREATE TABLE IF NOT EXISTS skipped (
    collection TEXT NOT NULL,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (collection, path)
);
CREATE TABLE IF NOT EXISTS atlases (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    weights TEXT NOT NULL,
    collection TEXT NOT NULL,
    layer TEXT NOT NULL,
    k INTEGER NOT NULL,
    state BLOB NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (model, weights, collection, layer)
);
CREATE TABLE IF NOT EXISTS atlas_images (
    atlas INTEGER NOT NULL REFERENCES atlases(id) ON DELETE CASCADE,
    image INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (atlas, image)
);
"""


def default_data_dir() -> Path:
    """``CNNVIZ_DATA_DIR``, else the user's cache folder (``$XDG_CACHE_HOME/cnnviz``, ``~/.cache/cnnviz``)."""
    if os.environ.get("CNNVIZ_DATA_DIR"):
        return Path(os.environ["CNNVIZ_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cnnviz"


@dataclass(frozen=True)
class StoredImage:
    id: int
    path: str
    digest: str
    label: str | None


@dataclass(frozen=True)
class AtlasKey:
    """What an atlas is of: the model (its registry key), its weights (a digest of their values), the
    collection (its name: ``dir:<absolute path>`` or ``zip:<digest>``) and the layer."""

    model: str
    weights: str
    collection: str
    layer: str


def _blob(atlas: LayerAtlas) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **atlas.arrays())  # never pickled: plain arrays, read back with allow_pickle=False
    return buffer.getvalue()


def _atlas(blob: bytes) -> LayerAtlas:
    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        return LayerAtlas.from_arrays({name: arrays[name] for name in arrays.files})


class Store:
    """The database file ``<data_dir>/atlas.sqlite3``; one connection per thread."""

    def __init__(self, data_dir: str | os.PathLike | None = None) -> None:
        self.folder = Path(data_dir) if data_dir is not None else default_data_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "atlas.sqlite3"
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # transactions are explicit
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------------------------------------
    # A collection's files
    # ------------------------------------------------------------------------------------------
    def known_digests(self, collection: str) -> dict[str, tuple[int, int, str]]:
        """{path: (size, mtime_ns, digest)} as last recorded (so unchanged files are not read again)."""
        rows = self._connect().execute("SELECT path, size, mtime_ns, digest FROM images WHERE collection = ?", (collection,))
        return {path: (size, mtime, digest) for path, size, mtime, digest in rows}

    def sync_images(self, collection: str, files: Iterable[tuple[str, int, int, str, str | None]]) -> list[StoredImage]:
        """Record the collection's files as they are now, ``(path, size, mtime_ns, digest, label)``; files no
        longer there are forgotten. Returns them with their ids (an unchanged path keeps its id)."""
        files = list(files)
        db = self._connect()
        with _transaction(db):
            db.execute("CREATE TEMP TABLE IF NOT EXISTS now (path TEXT PRIMARY KEY)")
            db.execute("DELETE FROM now")
            db.executemany("INSERT INTO now VALUES (?)", [(f[0],) for f in files])
            db.execute("DELETE FROM images WHERE collection = ? AND path NOT IN (SELECT path FROM now)", (collection,))
            db.executemany(
                "INSERT INTO images (collection, path, size, mtime_ns, digest, label) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (collection, path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "digest = excluded.digest, label = excluded.label",
                [(collection, *f) for f in files],
            )
        return self.images(collection)

    def images(self, collection: str) -> list[StoredImage]:
        rows = self._connect().execute("SELECT id, path, digest, label FROM images WHERE collection = ? ORDER BY path", (collection,))
        return [StoredImage(*row) for row in rows]

    def skipped(self, collection: str) -> dict[str, tuple[str, str]]:
        """{path: (digest, reason)} of the files a job could not read (not tried again while unchanged)."""
        rows = self._connect().execute("SELECT path, digest, reason FROM skipped WHERE collection = ?", (collection,))
        return {path: (digest, reason) for path, digest, reason in rows}

    # ------------------------------------------------------------------------------------------
    # Atlases
    # ------------------------------------------------------------------------------------------
    def atlas(self, key: AtlasKey) -> tuple[LayerAtlas, dict[int, str]] | None:
        """The stored atlas and the images it includes ({image id: digest}), or None."""
        db = self._connect()
        row = db.execute("SELECT id, state FROM atlases WHERE model = ? AND weights = ? AND collection = ? AND layer = ?",
                         (key.model, key.weights, key.collection, key.layer)).fetchone()
        if row is None:
            return None
        included = dict(db.execute("SELECT image, digest FROM atlas_images WHERE atlas = ?", (row[0],)))
        return _atlas(row[1]), included

    def atlases(self, model: str, weights: str, collection: str) -> list[str]:
        """The layers with a stored atlas for this model, weights and collection."""
        rows = self._connect().execute("SELECT layer FROM atlases WHERE model = ? AND weights = ? AND collection = ? ORDER BY id",
                                       (model, weights, collection))
        return [layer for (layer,) in rows]

    def save(self, states: dict[AtlasKey, tuple[LayerAtlas, dict[int, str], bool]], skipped: Iterable[tuple[str, str, str, str]] = ()) -> None:
        """One checkpoint, in one transaction: for each key its atlas, the images added since the last
        checkpoint ({id: digest}) and whether it starts afresh (its old images forgotten); and files skipped,
        ``(collection, path, digest, reason)``."""
        db = self._connect()
        with _transaction(db):
            for key, (atlas, added, fresh) in states.items():
                blob = _blob(atlas)
                db.execute(
                    "INSERT INTO atlases (model, weights, collection, layer, k, state, updated) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (model, weights, collection, layer) DO UPDATE SET k = excluded.k, state = excluded.state, "
                    "updated = excluded.updated",
                    (key.model, key.weights, key.collection, key.layer, atlas.k, blob, time.time()),
                )
                (atlas_id,) = db.execute("SELECT id FROM atlases WHERE model = ? AND weights = ? AND collection = ? AND layer = ?",
                                         (key.model, key.weights, key.collection, key.layer)).fetchone()
                if fresh:
                    db.execute("DELETE FROM atlas_images WHERE atlas = ?", (atlas_id,))
                db.executemany("INSERT OR REPLACE INTO atlas_images VALUES (?, ?, ?)", [(atlas_id, i, d) for i, d in added.items()])
            db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", list(skipped))


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, _value, _tb) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
