"""What every engine runs for a batch of images, and the in-process engine.

An engine takes an :class:`EngineJob` (the model, its transform, the layers, the images to do) and yields
:class:`Batch` es: for each image done, its reductions per layer (:class:`~cnnviz.dataset.accumulate.Reduced`);
for each image that could not be read, why. :func:`decode` and :func:`reduce_batch` are the only code that
touches pixels and the model, so every engine computes the same numbers; the caller (:mod:`.job`) folds
them, whatever the engine, in one place.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import CnnvizError
from ..hooks import forward_hooks
from ..layers import LayerInfo
from ..preprocess import open_image
from .accumulate import Reduced, reduce_maps


@dataclass(frozen=True)
class Item:
    """One image to do: ``id`` (the store's image id) and ``path`` (absolute, on the machine that decodes it)."""

    id: int
    path: str


@dataclass(frozen=True)
class Batch:
    """``ids``: the images done, in the rows of every ``reduced[layer]``; ``skipped``: (id, reason) of images
    that could not be read (corrupt, truncated, empty, too many pixels, not an image)."""

    ids: list[int]
    reduced: dict[str, Reduced]
    skipped: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class EngineJob:
    """Everything an engine needs. ``model`` and ``transform`` are plain objects (picklable: the Ray engine
    ships them to its workers); ``device``: where the model runs ("cpu", "cuda")."""

    model: torch.nn.Module
    transform: Callable
    layers: Sequence[LayerInfo]
    items: Sequence[Item]
    batch_size: int
    device: str = "cpu"
    stop: Callable[[], bool] = lambda: False
    workers: int | None = None  # decode workers; None: chosen from the machine


class _Enough(Exception):
    """Raised by a hook once every wanted layer is reduced: the rest of the network need not run."""


def decode(path: str, transform: Callable) -> torch.Tensor:
    """The model's input for one file, ``Tensor[3,H,W]`` float32: the app's safe decoder (format allow-list,
    byte and pixel limits) then the model's own transform. Raises :class:`CnnvizError` with the reason."""
    return transform(open_image(path))


def try_decode(path: str, transform: Callable) -> tuple[torch.Tensor | None, str | None]:
    """:func:`decode`, never raising: ``(tensor, None)``, or ``(None, reason)`` for a file that cannot be read or
    prepared. Every engine decodes through it, so a bad file is skipped with the same words whatever the engine,
    and one bad file never ends a pass."""
    try:
        return decode(path, transform), None
    except CnnvizError as e:
        return None, str(e)
    except Exception as e:  # a transform that fails on this one picture: skipped, said why  # noqa: BLE001
        return None, f"could not be prepared for the model ({type(e).__name__}: {str(e)[:120]})"


def reduce_batch(model: torch.nn.Module, layers: Sequence[LayerInfo], x: torch.Tensor) -> dict[str, Reduced]:
    """One forward pass of ``x`` (``Tensor[B,3,H,W]`` on the model's device), each layer's maps reduced as the
    hook sees them (so a later in-place change cannot touch them); the pass stops after the last layer.
    The caller holds the model (no other thread runs it meanwhile)."""
    wanted = {layer.name: layer for layer in layers}
    out: dict[str, Reduced] = {}

    def on_output(name: str, _inputs: tuple, output) -> None:
        if name not in out:
            out[name] = reduce_maps(wanted[name].to_nchw(output))
        if len(out) == len(wanted):
            raise _Enough

    with forward_hooks(model, list(wanted), on_output), torch.inference_mode():
        try:
            model(x)
        except _Enough:
            pass
    return out


class _Files(Dataset):
    def __init__(self, items: Sequence[Item], transform: Callable) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        return item.id, *try_decode(item.path, self.transform)


def _collate(rows):
    return rows  # a list of (id, tensor or None, reason or None): stacking waits for the skips to be set aside


def default_workers() -> int:
    """Decode workers for this machine: one core is left to the model."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def run_local(job: EngineJob) -> Iterator[Batch]:
    """The in-process engine: a ``DataLoader`` decodes in worker processes while the model runs here."""
    workers = default_workers() if job.workers is None else job.workers
    # a process with other threads (a server) starts its workers fresh: forking it could copy a held lock
    context = "spawn" if workers and threading.active_count() > 1 else None
    loader = DataLoader(_Files(job.items, job.transform), batch_size=job.batch_size, num_workers=workers,
                        collate_fn=_collate, persistent_workers=False, prefetch_factor=2 if workers else None,
                        multiprocessing_context=context)
    for rows in loader:
        if job.stop():
            return
        good = [(image_id, x) for image_id, x, _ in rows if x is not None]
        skipped = [(image_id, reason) for image_id, x, reason in rows if x is None]
        reduced = {}
        if good:
            x = torch.stack([x for _, x in good]).to(job.device)
            reduced = reduce_batch(job.model, job.layers, x)
        yield Batch([image_id for image_id, _ in good], reduced, skipped)
