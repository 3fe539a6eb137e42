"""Dataset examples: a channel's real images across a whole collection, and the collection's statistics.

:func:`atlas` runs (or resumes, or looks up) the pass over a folder of images; :func:`dataset_examples`
and :func:`collection_table` read what it stored. The pass, the engines and the database are the library
room :mod:`cnnviz.dataset`.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layers as layer_listing
from .. import preprocess, receptive, vocab
from ..dataset import catalog, job
from ..dataset.accumulate import Entries, LayerAtlas
from ..dataset.background import AtlasJob, Jobs
from ..dataset.files import Skipped
from ..dataset.job import AtlasReport, Progress
from ..dataset.store import AtlasKey, Store
from ..errors import CnnvizError, quoted
from ..layers import LayerInfo
from ..loading import LoadedModel, load_model
from ..pretrained import WeightsOutcome

__all__ = [
    "AtlasJob", "AtlasReport", "CollectionTable", "DatasetExample", "ExamplesView", "NotComputedError", "Progress", "Skipped",
    "add_collection_zip", "atlas", "atlas_job", "collection_folder", "collection_table", "collections", "dataset_examples",
    "default_atlas_layers", "start_atlas", "stop_atlas",
]

MAX_K = 100  # examples kept per channel and order: a page shows 9; more is a table, not a picture


class NotComputedError(CnnvizError):
    """The collection has no stored atlas for this model, weights and layer (run :func:`atlas` first)."""


def default_atlas_layers(loaded: LoadedModel) -> list[LayerInfo]:
    """The output of each stage (as Compare matches them), or the last listed layer when none is found."""
    listed = layer_listing.list_layers(loaded)
    by_name = {info.name: info for info in listed}
    stages = [by_name[s.layer] for s in receptive.list_stages(loaded, listed) if s.layer in by_name]
    return stages or list(listed[-1:])


def _layers(loaded: LoadedModel, names: Sequence[str] | str | None) -> list[LayerInfo]:
    if names is None or names == "" or names == []:
        return default_atlas_layers(loaded)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [layer_listing.get_layer(loaded, name) for name in dict.fromkeys(names)]


def _folder(data: str | Path) -> Path:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise CnnvizError(f"The collection {quoted(str(data))} is not a folder. Give a folder of images "
                          "(one sub-folder per class gives labels).")
    return root


def atlas(
    model: str | LoadedModel,
    data: str | Path,
    *,
    layers: Sequence[str] | str | None = None,
    weights: str = "pretrained",
    k: int = 9,
    engine: str = "local",
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
    ray_address: str | None = None,
    workers: int | None = None,
    checkpoint_images: int = job.CHECKPOINT_IMAGES,
) -> AtlasReport:
    """Run, resume or look up the dataset examples of ``layers`` (default: each stage's output) over the
    images in folder ``data`` (recursively; one sub-folder per class gives labels). Only images not yet in
    the stored atlases are read; the rest is a lookup. ``engine``: "local" (in-process) or "ray" (Ray Data;
    ``ray_address`` or ``RAY_ADDRESS`` names a cluster, else a local Ray starts). The store is
    ``data_dir`` (default ``CNNVIZ_DATA_DIR``, else the user's cache folder).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as store:
    ...     report = atlas("resnet18", "examples", layers="layer4", weights="random", k=3, data_dir=store, workers=0)
    ...     report.layers, report.complete, report.images == report.new > 0
    (('layer4',), True, True)
    """
    k = vocab.whole(k, 1, MAX_K, "k (examples kept per channel)")
    engine = vocab.option(vocab.Engine, engine, "engine")
    loaded = load_model(model, weights)
    chosen = _layers(loaded, layers)
    return job.run_atlas(loaded, _folder(data), chosen, k=k, store=Store(data_dir), engine=str(engine), batch_size=batch_size,
                         progress=progress, stop=stop, ray_address=ray_address, workers=workers, checkpoint_images=checkpoint_images)


@dataclass(frozen=True)
class DatasetExample:
    """One image of a channel's examples: ``path`` (relative to the collection), ``value`` (the channel's
    spatial maximum in that image), ``y``, ``x`` (where, on the layer's map), ``label`` (its class, or None),
    ``crop`` (uint8[h,w,3]: the receptive field of that position in the picture the model saw) and ``box``
    (top, left, bottom, right of the crop in that picture)."""

    path: str
    value: float
    y: int
    x: int
    label: str | None
    crop: np.ndarray
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class ExamplesView:
    """A channel's examples, best first, and what they are of."""

    examples: tuple[DatasetExample, ...]
    layer: str
    channel: int
    order: vocab.ExampleOrder
    collection: str
    images: int  # in the stored atlas
    weights: WeightsOutcome

    def __iter__(self):
        return iter(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> DatasetExample:
        return self.examples[index]


def _stored(loaded: LoadedModel, root: Path, layer: LayerInfo, data_dir) -> tuple[LayerAtlas, dict[int, str], Store]:
    store = Store(data_dir)
    key = AtlasKey(loaded.spec.key, job.weights_digest(loaded), job.collection_name(root), layer.name)
    found = store.atlas(key)
    if found is None or found[0].images == 0:
        raise NotComputedError(
            f"No dataset examples of {layer.name} in {quoted(root.name)} for {loaded.spec.key} with these weights yet. "
            f"Run the atlas first: cnnviz atlas --model {loaded.spec.key} --data {quoted(str(root))} --layers {layer.name}")
    return found[0], found[1], store


def dataset_examples(
    model: str | LoadedModel,
    layer: str,
    channel: int,
    *,
    data: str | Path,
    weights: str = "pretrained",
    k: int = 9,
    order: str = "top",
    data_dir: str | Path | None = None,
) -> ExamplesView:
    """The stored examples of ``channel`` at ``layer`` in collection ``data``, best first (``order``: "top",
    "bottom" or "random"), each with the crop of the picture the model saw around the channel's maximum.
    Raises :class:`NotComputedError` when :func:`atlas` has not stored this layer yet."""
    order = vocab.option(vocab.ExampleOrder, order, "order")
    loaded = load_model(model, weights)
    info = layer_listing.get_layer(loaded, layer)
    root = _folder(data)
    stored, _, store = _stored(loaded, root, info, data_dir)
    channel = vocab.whole(channel, 0, stored.channels - 1, "Channel", f" ({info.name} has {stored.channels} channels)")
    k = vocab.whole(k, 1, stored.k, "k", f" (the atlas kept {stored.k} per channel; run it again with a larger k for more)")
    entries: Entries = {vocab.ExampleOrder.TOP: stored.top, vocab.ExampleOrder.BOTTOM: stored.bottom,
                        vocab.ExampleOrder.RANDOM: stored.sample}[order]
    paths = {image.id: image for image in store.images(job.collection_name(root))}
    geometry = receptive.layer_geometry(loaded, layer_listing.list_layers(loaded)).get(info.name)
    found = []
    for j in range(k):
        image_id = int(entries.image[channel, j])
        if image_id < 0 or image_id not in paths:
            continue
        image = paths[image_id]
        y, x = int(entries.y[channel, j]), int(entries.x[channel, j])
        crop, box = _crop(loaded, root / image.path, info, geometry, y, x)
        found.append(DatasetExample(image.path, float(entries.value[channel, j]), y, x, image.label, crop, box))
    return ExamplesView(tuple(found), info.name, channel, order, job.collection_name(root), stored.images, loaded.weights)


def _crop(loaded: LoadedModel, path: Path, info: LayerInfo, geometry, y: int, x: int):
    picture = preprocess.seen_image(loaded, preprocess.model_input(loaded, str(path)).x)
    size = picture.shape[:2]
    if geometry is None:  # no traced geometry: the map's grid cell, scaled to the picture
        _, h, w = info.shape
        sy, sx = size[0] / h, size[1] / w
        box = (int(y * sy), int(x * sx), int((y + 1) * sy), int((x + 1) * sx))
    else:
        box = receptive.field_box(geometry, y, x, size)
    top, left, bottom, right = box
    return picture[top:bottom, left:right].copy(), box


@dataclass(frozen=True)
class CollectionTable:
    """Per channel of a layer over the whole collection (not one photo): mean (over every position of every
    image), max, active share (positions > 0), dead (never > 0 in any image), and with labels the top class
    and the class-selectivity index of Morcos et al. (2018)."""

    layer: str
    collection: str
    images: int
    labels: tuple[str, ...]
    mean: np.ndarray
    maximum: np.ndarray
    active_share: np.ndarray
    dead: np.ndarray
    top_class: np.ndarray  # int64[C]; -1: no labels
    selectivity: np.ndarray  # float64[C]; NaN: no labels
    weights: WeightsOutcome

    HEADERS = ("channel", "mean", "max", "active share", "dead over the collection", "top class", "class selectivity")

    def rows(self) -> list[tuple]:
        return [
            (c, float(self.mean[c]), float(self.maximum[c]), float(self.active_share[c]), bool(self.dead[c]),
             self.labels[self.top_class[c]] if self.top_class[c] >= 0 else "", float(self.selectivity[c]))
            for c in range(len(self.mean))
        ]

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.HEADERS)
        writer.writerows(self.rows())
        return out.getvalue()


def collection_table(
    model: str | LoadedModel, layer: str, *, data: str | Path, weights: str = "pretrained", data_dir: str | Path | None = None
) -> CollectionTable:
    """The stored per-channel statistics of ``layer`` over collection ``data`` (see :class:`CollectionTable`)."""
    loaded = load_model(model, weights)
    info = layer_listing.get_layer(loaded, layer)
    root = _folder(data)
    stored, _, _ = _stored(loaded, root, info, data_dir)
    return CollectionTable(info.name, job.collection_name(root), stored.images, stored.labels, stored.mean(), stored.maximum,
                           stored.active_share(), stored.dead(), stored.top_class(), stored.selectivity(), loaded.weights)


# --------------------------------------------------------------------------------------------------
# Collections by name and jobs in the background: what a server offers (no request names a path)
# --------------------------------------------------------------------------------------------------

JOBS = Jobs()
collection_folder = catalog.folder  # a collection's folder, by name (the operator's --data, or an uploaded zip's)


def collections() -> list[str]:
    """The collections a page may choose: the operator's (``--data NAME=DIR``), then uploaded zips."""
    return catalog.names()


def add_collection_zip(zip_path: str | Path, parent: str | Path) -> str:
    """Extract an uploaded zip safely under ``parent`` (see :func:`cnnviz.dataset.files.extract_zip` for the
    limits) and return its collection name, ``upload/<digest>``."""
    return catalog.add_zip(zip_path, parent)


def start_atlas(model: str, collection: str, *, layers: Sequence[str] | str | None = None, weights: str = "pretrained",
                k: int = 9, data_dir: str | Path | None = None) -> AtlasJob:
    """Start (or find) the atlas job of ``model`` over the named ``collection`` in the background; the same
    question asked again returns the same job (running: its progress; done: its report, a lookup)."""
    k = vocab.whole(k, 1, MAX_K, "k (examples kept per channel)")
    loaded = load_model(model, weights)
    chosen = _layers(loaded, layers)
    root = collection_folder(collection)
    key = (loaded.spec.key, job.weights_digest(loaded), str(root), tuple(info.name for info in chosen), k)
    words = f"{loaded.spec.key} ({weights}) on {collection}: {', '.join(info.name for info in chosen)}, {k} per channel"

    def run(progress, stop) -> AtlasReport:
        return job.run_atlas(loaded, root, chosen, k=k, store=Store(data_dir), progress=progress, stop=stop)

    return JOBS.start(key, words, run)


def atlas_job(job_id: str) -> AtlasJob:
    """A job started by :func:`start_atlas`, as it is now."""
    return JOBS.get(str(job_id))


def stop_atlas(job_id: str) -> AtlasJob:
    """Stop a job at its next batch; what it saved is kept (starting it again resumes)."""
    return JOBS.stop(str(job_id))
