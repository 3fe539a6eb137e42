"""cnnviz.cache.Store: the one bounded store behind every cache (by bytes, least recently used out)."""
from __future__ import annotations

import threading

import numpy as np
import torch

from cnnviz import activations, cache, filters, layers, loading, preprocess


def test_the_least_recently_used_entries_go_once_the_bytes_pass_the_budget():
    store = cache.Store("test", budget=100)
    store.put("a", "A", 60)
    store.put("b", "B", 30)
    assert store.get("a") == "A"  # a is now the most recent
    store.put("c", "C", 30)  # 120 > 100: the least recent (b) goes
    assert store.get("b") is None and store.get("a") == "A" and store.nbytes == 90
    store.put("a", "A2", 10)  # replacing an entry counts its new size only
    assert store.nbytes == 40 and store.get("a") == "A2"


def test_an_entry_larger_than_the_budget_stays_alone_unless_the_store_refuses_oversized_ones():
    keeps = cache.Store("keeps", budget=10)
    keeps.put("small", 1, 5)
    assert keeps.put("big", 2, 50) == 2 and list(k for k, _ in keeps.items()) == ["big"] and keeps.nbytes == 50
    refuses = cache.Store("refuses", budget=10, keep_oversized=False)
    refuses.put("small", 1, 5)
    assert refuses.put("big", 2, 50) == 2  # returned to the caller, not kept
    assert refuses.get("big") is None and refuses.get("small") == 1 and refuses.nbytes == 5


def test_sizes_are_measured_from_what_a_value_holds():
    t = torch.zeros(1000)
    assert cache.nbytes_of(t) == 4000
    assert cache.nbytes_of(t[:10]) == 4000  # a view keeps its whole storage alive
    assert cache.nbytes_of({"x": np.zeros(10, np.uint8), "y": (t,)}) == 4010


def test_concurrent_puts_keep_the_count_exact():
    store = cache.Store("threads", budget=10_000)

    def work(offset: int) -> None:
        for i in range(500):
            store.put((offset, i % 50), i, 7)
            store.get((offset, (i * 7) % 50))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.nbytes == 7 * len(store) <= 10_000


def test_every_cache_of_a_loaded_model_is_a_store_with_a_stated_budget(coffee):
    loading.clear_cache()
    loaded = loading.load_model("resnet18", "random")
    found = preprocess.model_input(loaded, coffee)
    activations.layer_maps(loaded, found.x, found.digest, layers.get_layer(loaded, "layer1"))
    filters.analysed(loaded, "conv1")
    stores = {key: value for key, value in loaded.derived.items() if isinstance(value, cache.Store)}
    assert {"preprocess.inputs", "activations.predictions", "filters.cache"} <= set(stores)
    assert all(store.budget > 0 and store.nbytes <= store.budget for store in stores.values())
    assert activations.KEPT.nbytes <= activations.KEPT.budget
