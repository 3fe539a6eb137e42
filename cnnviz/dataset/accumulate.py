"""What a layer's channels do over a whole image collection, kept in memory that does not grow with it.

A pass over a collection reduces each image's maps of a layer (``Tensor[B,C,H,W]``) to a few numbers per
channel (:func:`reduce_maps`: the spatial maximum, where it is, the spatial mean, how many positions are
positive); :class:`LayerAtlas` folds those into bounded state: per channel the top-k and bottom-k images
by their spatial maximum (one entry per image), a fixed random sample of k images, and running sums for
the statistics. Two atlases of disjoint image sets merge into the atlas of their union, exactly: the
engines (in-process, Ray) differ only in where the reductions are computed, never in how they are folded.

Order: by value (highest first for "top", lowest first for "bottom"); equal values by the image's path
(code-point order), so the answer never depends on the order images arrived in. The random sample is the
k images whose path hashes lowest (xxh3, fixed seed): the same images for every channel and every run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xxhash

SAMPLE_SEED = 20181012  # the random sample's hash seed: fixed, so a sample is reproducible


@dataclass(frozen=True)
class Reduced:
    """Per image and channel of one batch: ``value`` float32[B,C] (the spatial maximum), ``y``/``x``
    int32[B,C] (its position on the map; the first in row-major order among equal maxima), ``mean``
    float64[B,C] (the spatial mean), ``rectified`` float64[B,C] (the spatial mean of max(map, 0): what a
    ReLU would pass on), ``positive`` int64[B,C] (positions > 0), ``positions`` (H·W)."""

    value: np.ndarray
    y: np.ndarray
    x: np.ndarray
    mean: np.ndarray
    rectified: np.ndarray
    positive: np.ndarray
    positions: int


def reduce_maps(maps: torch.Tensor) -> Reduced:
    """``maps``: ``Tensor[B,C,H,W]`` (any float dtype and device) → its per-image, per-channel :class:`Reduced`."""
    b, c, h, w = maps.shape
    flat = maps.detach().reshape(b, c, h * w).float()
    value, where = flat.max(dim=2)  # among equal maxima, torch returns the first index (row-major: top-left)
    mean = flat.double().mean(dim=2)
    rectified = flat.clamp(min=0).double().mean(dim=2)
    positive = (flat > 0).sum(dim=2)
    where = where.cpu().numpy().astype(np.int64)
    return Reduced(
        value=value.cpu().numpy().astype(np.float32),
        y=(where // w).astype(np.int32),
        x=(where % w).astype(np.int32),
        mean=mean.cpu().numpy(),
        rectified=rectified.cpu().numpy(),
        positive=positive.cpu().numpy().astype(np.int64),
        positions=h * w,
    )


def sample_key(path: str) -> int:
    """Where ``path`` falls in the random sample's order (lowest first)."""
    return xxhash.xxh3_64_intdigest(path.encode("utf-8"), seed=SAMPLE_SEED)


@dataclass
class Entries:
    """k ranked entries per channel: ``image`` int64[C,k] (image ids; -1: empty), ``value`` float32[C,k],
    ``y``/``x`` int32[C,k]. Ranked best first; empty slots last."""

    image: np.ndarray
    value: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @classmethod
    def empty(cls, channels: int, k: int) -> Entries:
        return cls(np.full((channels, k), -1, np.int64), np.zeros((channels, k), np.float32),
                   np.zeros((channels, k), np.int32), np.zeros((channels, k), np.int32))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_{name}": getattr(self, name) for name in ("image", "value", "y", "x")}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> Entries:
        return cls(*(np.asarray(arrays[f"{prefix}_{name}"]) for name in ("image", "value", "y", "x")))


def _merge(a: Entries, b: Entries, rank: np.ndarray, k: int, descending: bool) -> Entries:
    """The best ``k`` of ``a`` and ``b`` per channel; ``rank[i]``: image id i's place in path order."""
    image = np.concatenate([a.image, b.image], axis=1)
    value = np.concatenate([a.value, b.value], axis=1)
    y = np.concatenate([a.y, b.y], axis=1)
    x = np.concatenate([a.x, b.x], axis=1)
    empty = image < 0
    key = np.where(empty, np.inf, -value if descending else value).astype(np.float64)
    ties = np.where(empty, np.iinfo(np.int64).max, rank[np.maximum(image, 0)])
    order = np.lexsort((ties, key), axis=1)[:, :k]  # by value, then path
    pick = lambda array: np.take_along_axis(array, order, axis=1)  # noqa: E731
    return Entries(pick(image), pick(value), pick(y), pick(x))


@dataclass
class LayerAtlas:
    """The running atlas of one layer over the images added so far (see the module's docstring).

    ``labels``: the collection's class names (ImageFolder sub-folders), or () for an unlabelled one;
    per-class sums exist only with labels."""

    channels: int
    k: int
    labels: tuple[str, ...]
    top: Entries
    bottom: Entries
    sample: Entries  # per channel, the sample's images in sample order (the same ids on every row)
    sample_keys: np.ndarray  # uint64[k]: the sample's keys, in order; empty slots hold the maximum
    images: int
    positions: int  # H·W of one map
    total_mean: np.ndarray  # float64[C]: sum over images of the spatial mean
    maximum: np.ndarray  # float32[C]: -inf before any image
    positive: np.ndarray  # int64[C]: positions > 0, over every image
    class_mean: np.ndarray  # float64[L,C]: per class, sum over its images of the spatial mean
    class_rectified: np.ndarray  # float64[L,C]: per class, sum over its images of the rectified spatial mean
    class_images: np.ndarray  # int64[L]

    @classmethod
    def empty(cls, channels: int, k: int, labels: Sequence[str] = ()) -> LayerAtlas:
        labels = tuple(labels)
        return cls(channels, k, labels, Entries.empty(channels, k), Entries.empty(channels, k), Entries.empty(channels, k),
                   np.full(k, np.iinfo(np.uint64).max, np.uint64), 0, 0, np.zeros(channels), np.full(channels, -np.inf, np.float32),
                   np.zeros(channels, np.int64), np.zeros((len(labels), channels)), np.zeros((len(labels), channels)),
                   np.zeros(len(labels), np.int64))

    def add(self, ids: Sequence[int], classes: Sequence[int], reduced: Reduced, rank: np.ndarray, keys: Sequence[int]) -> None:
        """Fold a batch in: image ``ids`` (never added before), their class indices (-1: none), their
        reductions, ``rank`` (every id's place in path order) and their sample keys (:func:`sample_key`)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        if self.positions and reduced.positions != self.positions:
            raise ValueError(f"maps of {reduced.positions} positions after {self.positions}: the input size changed mid-pass")
        self.positions = reduced.positions
        batch = Entries(np.broadcast_to(ids, (self.channels, len(ids))).copy(), reduced.value.T.copy(),
                        reduced.y.T.copy(), reduced.x.T.copy())
        self.top = _merge(self.top, batch, rank, self.k, descending=True)
        self.bottom = _merge(self.bottom, batch, rank, self.k, descending=False)
        self._sample(batch, np.asarray(keys, np.uint64), rank)
        self.images += len(ids)
        self.total_mean += reduced.mean.sum(axis=0)
        self.maximum = np.maximum(self.maximum, reduced.value.max(axis=0))
        self.positive += reduced.positive.sum(axis=0)
        classes = np.asarray(classes, np.int64)
        labelled = classes >= 0
        if len(self.labels) and labelled.any():
            np.add.at(self.class_mean, classes[labelled], reduced.mean[labelled])
            np.add.at(self.class_rectified, classes[labelled], reduced.rectified[labelled])
            np.add.at(self.class_images, classes[labelled], 1)

    def _sample(self, batch: Entries, keys: np.ndarray, rank: np.ndarray) -> None:
        """Keep the k entries with the lowest keys (ties: path order) among the old sample and the batch."""
        all_keys = np.concatenate([self.sample_keys, keys])
        images = np.concatenate([self.sample.image[0] if self.channels else np.full(self.k, -1), batch.image[0]])
        ties = np.where(images < 0, np.iinfo(np.int64).max, rank[np.maximum(images, 0)])
        order = np.lexsort((ties, all_keys))[: self.k]
        merged = [np.concatenate([getattr(self.sample, n), getattr(batch, n)], axis=1)[:, order] for n in ("image", "value", "y", "x")]
        self.sample = Entries(*merged)
        self.sample_keys = all_keys[order]

    def merge(self, other: LayerAtlas, rank: np.ndarray) -> None:
        """Fold in the atlas of a disjoint set of images of the same collection and layer."""
        if (other.channels, other.k, other.labels) != (self.channels, self.k, self.labels):
            raise ValueError("atlases of different layers, k or labels cannot be merged")
        if other.images == 0:
            return
        if self.positions and other.positions != self.positions:
            raise ValueError("atlases of different map sizes cannot be merged")
        self.positions = other.positions
        self.top = _merge(self.top, other.top, rank, self.k, descending=True)
        self.bottom = _merge(self.bottom, other.bottom, rank, self.k, descending=False)
        self._sample(other.sample, other.sample_keys, rank)
        self.images += other.images
        self.total_mean += other.total_mean
        self.maximum = np.maximum(self.maximum, other.maximum)
        self.positive += other.positive
        self.class_mean += other.class_mean
        self.class_rectified += other.class_rectified
        self.class_images += other.class_images

    # ------------------------------------------------------------------------------------------
    # Statistics over the collection
    # ------------------------------------------------------------------------------------------
    def mean(self) -> np.ndarray:
        """float64[C]: the channel's mean over every position of every image (NaN before any image)."""
        return self.total_mean / self.images if self.images else np.full(self.channels, np.nan)

    def active_share(self) -> np.ndarray:
        """float64[C]: the share of positions > 0, over every position of every image."""
        total = self.images * self.positions
        return self.positive / total if total else np.full(self.channels, np.nan)

    def dead(self) -> np.ndarray:
        """bool[C]: never > 0 anywhere in the collection (not the per-photo "dead", which one photo decides)."""
        return (self.positive == 0) & (self.images > 0)

    def per_class_mean(self) -> np.ndarray:
        """float64[L,C]: each class's mean of the channel's spatial mean over its images (NaN: no image)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_mean / self.class_images[:, None]

    def per_class_rectified(self) -> np.ndarray:
        """float64[L,C]: each class's mean of the rectified map (max(map, 0)) over its images (NaN: no image)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_rectified / self.class_images[:, None]

    def top_class(self) -> np.ndarray:
        """int64[C]: the class that drives the channel most: the highest mean of the rectified map (-1 without
        labels, with fewer than two classes seen, or for a channel never active)."""
        means = self.per_class_rectified()
        seen = self.class_images > 0
        if seen.sum() < 2:
            return np.full(self.channels, -1, np.int64)
        best = np.argmax(np.where(seen[:, None], means, -np.inf), axis=0).astype(np.int64)
        return np.where(np.nanmax(np.where(seen[:, None], means, np.nan), axis=0) > 0, best, -1)  # never active: no class

    def selectivity(self) -> np.ndarray:
        """float64[C]: the class-selectivity index of Morcos et al. (2018), (μmax − μ−max)/(μmax + μ−max): μmax the
        highest class mean, μ−max the mean of the other classes' means, of the rectified map (max(map, 0)): the
        index is defined for non-negative activity (they measured it after ReLUs), and a layer without a ReLU
        (a block's projection) would otherwise give values outside [0, 1]. 0: no preference, 1: only one class
        drives it; NaN without two classes or when no class drives it at all."""
        means = self.per_class_rectified()[self.class_images > 0]
        if len(means) < 2:
            return np.full(self.channels, np.nan)
        best = means.max(axis=0)
        rest = (means.sum(axis=0) - best) / (len(means) - 1)
        denominator = best + rest
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, (best - rest) / denominator, np.nan)

    # ------------------------------------------------------------------------------------------
    # Stored form: plain arrays (the store writes them as one .npz blob)
    # ------------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {
            **self.top.arrays("top"), **self.bottom.arrays("bottom"), **self.sample.arrays("sample"),
            "sample_keys": self.sample_keys, "counts": np.array([self.channels, self.k, self.images, self.positions], np.int64),
            "labels": np.array(self.labels, dtype=np.str_), "total_mean": self.total_mean, "maximum": self.maximum,
            "positive": self.positive, "class_mean": self.class_mean, "class_rectified": self.class_rectified,
            "class_images": self.class_images,
        }

    @classmethod
    def from_arrays(cls, arrays) -> LayerAtlas:
        channels, k, images, positions = (int(v) for v in arrays["counts"])
        return cls(channels, k, tuple(str(v) for v in arrays["labels"]), Entries.from_arrays(arrays, "top"),
                   Entries.from_arrays(arrays, "bottom"), Entries.from_arrays(arrays, "sample"), np.asarray(arrays["sample_keys"]),
                   images, positions, np.asarray(arrays["total_mean"]), np.asarray(arrays["maximum"]), np.asarray(arrays["positive"]),
                   np.asarray(arrays["class_mean"]), np.asarray(arrays["class_rectified"]), np.asarray(arrays["class_images"]))
