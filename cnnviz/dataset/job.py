"""The pass over a collection: what is stored already, what is new, the engine's batches folded and saved.

A job's atlases are keyed by (model, weights digest, collection, layer). Run again, it reads every file's
size and modification time, hashes only files that changed, and then:

* an atlas that includes exactly images still in the collection (same content) only needs the new ones;
* an atlas that includes an image that is gone or changed starts afresh (a top-k cannot forget an image);
* files a job could not read are remembered with the reason and not tried again while unchanged.

Progress is saved at checkpoints (every ``checkpoint_images`` images or ``checkpoint_seconds``), each one
transaction: a job killed at any moment resumes from its last checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash

from ..layers import LayerInfo
from ..loading import LoadedModel
from . import files
from .accumulate import LayerAtlas, Reduced, sample_key
from .engine import Batch, EngineJob, Item, run_local
from .store import AtlasKey, Store, StoredImage

CHECKPOINT_IMAGES = 512
CHECKPOINT_SECONDS = 30.0


@dataclass(frozen=True)
class Progress:
    """Where a job is: ``done`` of ``total`` images this run (read or skipped), after ``seconds``."""

    done: int
    total: int
    seconds: float

    @property
    def rate(self) -> float:
        """Images per second so far."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def left(self) -> float | None:
        """Seconds left at the rate so far (None before the first image)."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class AtlasReport:
    """What a job did. ``images``: images the atlases hold (the whole collection's readable images);
    ``new``: images read in this run (0: every answer was a lookup); ``skipped``: each file not used,
    with the reason; ``complete``: False when the job was stopped (it resumes from its last checkpoint)."""

    model: str
    weights: str
    collection: str
    digest: str  # of the collection's content (every path and its bytes)
    layers: tuple[str, ...]
    images: int
    new: int
    skipped: tuple[files.Skipped, ...]
    seconds: float
    engine: str
    complete: bool

    def describe(self) -> str:
        """E.g. ``"1,000 images (24 new) in 3.1 s on local; 2 files skipped; layers: layer1, layer2"``."""
        state = "" if self.complete else " — stopped; run it again to resume"
        skipped = f"; {len(self.skipped)} file{'s' if len(self.skipped) != 1 else ''} skipped" if self.skipped else ""
        return (f"{self.images:,} images ({self.new:,} read now) in {self.seconds:.1f} s on {self.engine}{skipped}; "
                f"layers: {', '.join(self.layers)}{state}")


def weights_digest(loaded: LoadedModel) -> str:
    """A digest of the model's parameter and buffer values (what "the same weights" means for a stored atlas,
    whatever the model came from: a name, an upload, a module)."""

    def compute() -> str:
        digest = xxhash.xxh3_128()
        for name, tensor in loaded.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    return loaded.memo("dataset.weights_digest", compute)


def collection_name(root: str | Path) -> str:
    """The store's name of a folder collection: its real path."""
    return f"dir:{Path(root).resolve()}"


def scan(store: Store, root: Path, name: str) -> tuple[files.Listing, list[StoredImage]]:
    """List the folder, hash only what changed since the last scan, and record it."""
    listing = files.list_collection(root)
    known = store.known_digests(name)
    rows = []
    for f in listing.files:
        size, mtime, digest = known.get(f.path, (None, None, None))
        if (size, mtime) != (f.size, f.mtime_ns):
            digest = files.file_digest(root / f.path)
        rows.append((f.path, f.size, f.mtime_ns, digest, f.label))
    return listing, store.sync_images(name, rows)


def _rows(reduced: Reduced, rows: np.ndarray) -> Reduced:
    return dataclasses.replace(reduced, value=reduced.value[rows], y=reduced.y[rows], x=reduced.x[rows],
                               mean=reduced.mean[rows], rectified=reduced.rectified[rows], positive=reduced.positive[rows])


def default_batch_size(layers: Sequence[LayerInfo], device: str) -> int:
    """Images per batch: the maps of the widest layer for the whole batch in about 256 MB (1 GB on a GPU),
    between 1 and 64."""
    widest = max((layer.nbytes for layer in layers), default=1)
    budget = (2**30 if device.startswith("cuda") else 2**28) // max(widest, 1)
    return int(max(1, min(64, budget)))


def run_atlas(
    loaded: LoadedModel,
    root: str | Path,
    layers: Sequence[LayerInfo],
    *,
    k: int,
    store: Store,
    engine: str = "local",
    batch_size: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
    ray_address: str | None = None,
    workers: int | None = None,
    checkpoint_images: int = CHECKPOINT_IMAGES,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> AtlasReport:
    """Run or resume the atlases of ``layers`` over the collection in ``root``; see the module docstring."""
    started = time.monotonic()
    root = Path(root)
    name = collection_name(root)
    listing, images = scan(store, root, name)
    by_id = {image.id: image for image in images}
    rank = np.zeros(max(by_id, default=0) + 1, np.int64)
    rank[[image.id for image in images]] = np.arange(len(images))
    classes = {label: i for i, label in enumerate(listing.labels)}
    model_key, weights = loaded.spec.key, weights_digest(loaded)

    states: dict[str, tuple[AtlasKey, LayerAtlas, set[int], bool]] = {}
    for layer in layers:
        key = AtlasKey(model_key, weights, name, layer.name)
        found = store.atlas(key)
        usable = (found is not None and found[0].k >= k and found[0].labels == listing.labels
                  and all(by_id.get(i) is not None and by_id[i].digest == d for i, d in found[1].items()))
        atlas, included = found if usable else (LayerAtlas.empty(layer.shape[0], k, listing.labels), {})
        states[layer.name] = (key, atlas, set(included), not usable)

    known_skips = store.skipped(name)
    unreadable = {image.id for image in images if known_skips.get(image.path, ("", ""))[0] == image.digest}
    skipped = [files.Skipped(by_id[i].path, known_skips[by_id[i].path][1]) for i in sorted(unreadable, key=lambda i: rank[i])]
    todo = [image for image in images if image.id not in unreadable
            and any(image.id not in included for _, _, included, _ in states.values())]
    total, done = len(todo), 0
    if todo:
        job = EngineJob(copy.deepcopy(loaded.model), loaded.transform, list(layers), [Item(i.id, str(root / i.path)) for i in todo],
                        batch_size or default_batch_size(layers, str(loaded.device)), str(loaded.device), stop, workers)
        batches = _engine(engine, job, ray_address)
        done = _fold(batches, states, by_id, rank, classes, store, name, skipped, total, started, progress,
                         checkpoint_images, checkpoint_seconds)
    images_held = min(atlas.images for _, atlas, _, _ in states.values()) if states else 0
    skipped = [*listing.skipped, *skipped]
    digest = files.collection_digest((image.path, image.digest) for image in images)
    return AtlasReport(model_key, weights, name, digest, tuple(states), images_held, done, tuple(skipped),
                       time.monotonic() - started, engine, done >= total)


def _engine(engine: str, job: EngineJob, ray_address: str | None) -> Iterator[Batch]:
    if engine == "local":
        return run_local(job)
    from .ray_engine import run_ray  # Ray is an optional extra: imported only when asked for

    return run_ray(job, ray_address)


def _fold(batches: Iterator[Batch], states, by_id, rank, classes, store: Store, name: str, skipped: list, total: int,
          started: float, progress, checkpoint_images: int, checkpoint_seconds: float) -> int:
    """Fold the engine's batches into the atlases, saving at checkpoints; returns how many images were done."""
    added: dict[str, dict[int, str]] = {layer: {} for layer in states}
    new_skips: list[tuple[str, str, str, str]] = []
    done, since, last = 0, 0, time.monotonic()

    def checkpoint() -> None:
        store.save({key: (atlas, added[layer], fresh) for layer, (key, atlas, _, fresh) in states.items()}, new_skips)
        for layer, (key, atlas, included, _) in list(states.items()):
            states[layer] = (key, atlas, included, False)  # saved: the next checkpoint adds to it
            added[layer] = {}
        new_skips.clear()

    for batch in batches:
        ids = np.asarray(batch.ids, np.int64)
        for layer, (_key, atlas, included, _) in states.items():
            rows = np.array([i for i, image_id in enumerate(batch.ids) if image_id not in included], np.int64)
            if len(rows) == 0:
                continue
            chosen = ids[rows]
            labels = [classes.get(by_id[i].label, -1) for i in chosen]
            atlas.add(chosen, labels, _rows(batch.reduced[layer], rows), rank, [sample_key(by_id[i].path) for i in chosen])
            included.update(int(i) for i in chosen)
            added[layer].update({int(i): by_id[int(i)].digest for i in chosen})
        for image_id, reason in batch.skipped:
            image = by_id[image_id]
            skipped.append(files.Skipped(image.path, reason))
            new_skips.append((name, image.path, image.digest, reason))
        done += len(batch.ids) + len(batch.skipped)
        since += len(batch.ids) + len(batch.skipped)
        if progress is not None:
            progress(Progress(done, total, time.monotonic() - started))
        if since >= checkpoint_images or time.monotonic() - last >= checkpoint_seconds:
            checkpoint()
            since, last = 0, time.monotonic()
    checkpoint()
    return done
