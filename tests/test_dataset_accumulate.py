"""The per-channel atlas against brute force over every map: exact top-k / bottom-k (ties by path), the
random sample, the statistics, independent of batch split and merge order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnviz.dataset.accumulate import LayerAtlas, reduce_maps, sample_key

N, C, H, W, K = 37, 5, 4, 6, 4
LABELS = ("cat", "dog", "fish")


@pytest.fixture(scope="module")
def collection():
    rng = np.random.default_rng(7)
    # small integers: many equal maxima, so the tie-break is exercised; channel 3 never positive (dead)
    maps = rng.integers(-3, 4, size=(N, C, H, W)).astype(np.float32)
    maps[:, 3] = -np.abs(maps[:, 3]) - 1
    paths = [f"img/{name:03d}.png" for name in rng.permutation(N)]  # ids in one order, paths in another
    ids = np.arange(100, 100 + N)  # store ids need not start at 0
    classes = rng.integers(-1, len(LABELS), size=N)  # -1: an image without a label
    rank = np.zeros(ids.max() + 1, np.int64)
    rank[ids[np.argsort(paths)]] = np.arange(N)
    return maps, paths, ids, classes, rank


def _fold(collection, order, splits) -> LayerAtlas:
    maps, paths, ids, classes, rank = collection
    atlas = LayerAtlas.empty(C, K, LABELS)
    for part in np.array_split(order, splits):
        atlas.add(ids[part], classes[part], reduce_maps(torch.from_numpy(maps[part])), rank, [sample_key(paths[i]) for i in part])
    return atlas


def _brute_top(collection, descending: bool):
    maps, paths, ids, _, _ = collection
    flat = maps.reshape(N, C, H * W)
    peak, where = flat.max(axis=2), flat.argmax(axis=2)  # numpy: the first maximal index, like torch
    expected = []
    for c in range(C):
        order = sorted(range(N), key=lambda i: ((-peak[i, c]) if descending else peak[i, c], paths[i]))[:K]
        expected.append([(ids[i], peak[i, c], where[i, c] // W, where[i, c] % W) for i in order])
    return expected


def _entries(entries, c):
    return [(int(entries.image[c, j]), float(entries.value[c, j]), int(entries.y[c, j]), int(entries.x[c, j])) for j in range(K)]


@pytest.mark.parametrize("splits", [1, 3, 37])
def test_top_and_bottom_k_equal_brute_force_with_ties_broken_by_path(collection, splits):
    rng = np.random.default_rng(splits)
    atlas = _fold(collection, rng.permutation(N), splits)  # any arrival order, any batch size
    top, bottom = _brute_top(collection, True), _brute_top(collection, False)
    for c in range(C):
        assert _entries(atlas.top, c) == [(int(e[0]), float(e[1]), int(e[2]), int(e[3])) for e in top[c]]
        assert _entries(atlas.bottom, c) == [(int(e[0]), float(e[1]), int(e[2]), int(e[3])) for e in bottom[c]]


def test_two_atlases_merged_equal_one_atlas_of_all_images(collection):
    maps, paths, ids, classes, rank = collection
    whole = _fold(collection, np.arange(N), 4)
    first, second = LayerAtlas.empty(C, K, LABELS), LayerAtlas.empty(C, K, LABELS)
    for atlas, part in ((first, np.arange(0, N, 2)), (second, np.arange(1, N, 2))):
        atlas.add(ids[part], classes[part], reduce_maps(torch.from_numpy(maps[part])), rank, [sample_key(paths[i]) for i in part])
    first.merge(second, rank)
    for name in ("top", "bottom", "sample"):
        for field in ("image", "value", "y", "x"):
            np.testing.assert_array_equal(getattr(getattr(first, name), field), getattr(getattr(whole, name), field))
    np.testing.assert_allclose(first.mean(), whole.mean(), rtol=1e-12)
    np.testing.assert_array_equal(first.positive, whole.positive)


def test_the_sample_is_the_k_lowest_path_hashes_for_every_channel(collection):
    maps, paths, ids, _, _ = collection
    atlas = _fold(collection, np.arange(N)[::-1], 5)
    chosen = sorted(range(N), key=lambda i: (sample_key(paths[i]), paths[i]))[:K]
    flat = maps.reshape(N, C, H * W)
    for c in range(C):
        assert list(atlas.sample.image[c]) == [ids[i] for i in chosen]
        assert list(atlas.sample.value[c]) == [flat[i, c].max() for i in chosen]


def test_statistics_equal_numpy_over_every_map(collection):
    maps, _, _, classes, _ = collection
    atlas = _fold(collection, np.arange(N), 6)
    np.testing.assert_allclose(atlas.mean(), maps.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_array_equal(atlas.maximum, maps.max(axis=(0, 2, 3)))
    np.testing.assert_allclose(atlas.active_share(), (maps > 0).mean(axis=(0, 2, 3)))
    assert list(atlas.dead()) == [not (maps[:, c] > 0).any() for c in range(C)] and atlas.dead()[3]
    spatial = maps.astype(np.float64).mean(axis=(2, 3))
    per_class = np.stack([spatial[classes == label].mean(axis=0) for label in range(len(LABELS))])
    np.testing.assert_allclose(atlas.per_class_mean(), per_class, rtol=1e-9)
    rectified = np.maximum(maps.astype(np.float64), 0).mean(axis=(2, 3))  # what a ReLU passes on
    per_class = np.stack([rectified[classes == label].mean(axis=0) for label in range(len(LABELS))])
    np.testing.assert_allclose(atlas.per_class_rectified(), per_class, rtol=1e-9)
    assert list(atlas.top_class()[[0, 1, 2, 4]]) == list(per_class.argmax(axis=0)[[0, 1, 2, 4]])
    assert atlas.top_class()[3] == -1 and np.isnan(atlas.selectivity()[3])  # never active: no class drives it
    assert np.nanmin(atlas.selectivity()) >= 0 and np.nanmax(atlas.selectivity()) <= 1
    for c in range(C):  # Morcos et al. 2018, written out, on the rectified map
        best = per_class[:, c].max()
        rest = (per_class[:, c].sum() - best) / (len(LABELS) - 1)
        expected = (best - rest) / (best + rest) if best + rest > 0 else np.nan
        np.testing.assert_allclose(atlas.selectivity()[c], expected, rtol=1e-9, equal_nan=True)


def test_stored_arrays_give_back_the_same_atlas(collection):
    atlas = _fold(collection, np.arange(N), 2)
    again = LayerAtlas.from_arrays(atlas.arrays())
    assert (again.channels, again.k, again.labels, again.images, again.positions) == (C, K, LABELS, N, H * W)
    for name, value in atlas.arrays().items():
        np.testing.assert_array_equal(again.arrays()[name], value)


def test_an_unlabelled_collection_has_no_class_statistics(collection):
    maps, paths, ids, _, rank = collection
    atlas = LayerAtlas.empty(C, K)
    atlas.add(ids, np.full(N, -1), reduce_maps(torch.from_numpy(maps)), rank, [sample_key(p) for p in paths])
    assert (atlas.top_class() == -1).all() and np.isnan(atlas.selectivity()).all()


def test_fewer_images_than_k_leave_empty_slots_last(collection):
    maps, paths, ids, classes, rank = collection
    atlas = LayerAtlas.empty(C, K, LABELS)
    atlas.add(ids[:2], classes[:2], reduce_maps(torch.from_numpy(maps[:2])), rank, [sample_key(p) for p in paths[:2]])
    assert (atlas.top.image[:, 2:] == -1).all() and (atlas.top.image[:, :2] >= 0).all()
    assert (atlas.sample.image[:, 2:] == -1).all()
