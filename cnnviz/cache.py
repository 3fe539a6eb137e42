"""One bounded store: least recently used entries out once their bytes pass a stated budget.

Every cache of the app is one of these (kept maps, filters, inputs, predictions, feature visualisations,
models, upload names): each says its budget in bytes, because memory is what runs out, not entries (two kept
passes of a 600 px EfficientNet are 13 GB; two of AlexNet 10 MB). The entry just put always stays, even when
alone it is larger than the budget, unless ``keep_oversized=False`` (then it is returned but not kept).

Thread-safe: every method holds the store's lock; ``get_or_put`` computes outside it (two first uses at once
may both compute, the first result stays).
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np
import torch

V = TypeVar("V")


def nbytes_of(value: object) -> int:
    """Bytes ``value`` holds alive, roughly: a tensor's whole storage (a view may keep a larger one), an
    array's buffer, the sum over a tuple/list/dict's items or a dataclass's fields, else ``sys.getsizeof``.

    >>> nbytes_of(torch.zeros(10, 10)), nbytes_of((np.zeros(4, np.uint8), torch.zeros(2)))
    (400, 12)
    """
    if isinstance(value, torch.Tensor):
        return 0 if value.is_meta else value.untyped_storage().nbytes()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes_of(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return sum(nbytes_of(getattr(value, name)) for name in fields)
    return sys.getsizeof(value)


class Store(Generic[V]):
    """Key -> value, least recently used first out once the values' bytes pass ``budget``.

    >>> store = Store("example", budget=100)
    >>> store.put("a", "x", nbytes=60); store.put("b", "y", nbytes=60)
    'x'
    'y'
    >>> store.get("a"), store.get("b"), store.nbytes
    (None, 'y', 60)
    """

    def __init__(self, name: str, budget: int, *, keep_oversized: bool = True) -> None:
        self.name = name  # what is kept, for messages and benchmarks ("kept maps", "models")
        self.budget = max(0, int(budget))
        self.keep_oversized = keep_oversized
        self.nbytes = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        """The value for ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: V, nbytes: int | None = None) -> V:
        """Keep ``value`` (``nbytes``: its size, else :func:`nbytes_of`), evict beyond the budget; return it."""
        size = nbytes_of(value) if nbytes is None else int(nbytes)
        with self._lock:
            if key in self._items:
                self.nbytes -= self._items.pop(key)[1]
            if size > self.budget and not self.keep_oversized:
                return value
            self._items[key] = (value, size)
            self.nbytes += size
            while self.nbytes > self.budget and len(self._items) > 1:
                self.nbytes -= self._items.popitem(last=False)[1][1]
        return value

    def get_or_put(self, key: Hashable, compute: Callable[[], V], nbytes: int | None = None) -> V:
        """The kept value for ``key``, else ``compute()`` kept and returned."""
        found = self.get(key)
        return found if found is not None else self.put(key, compute(), nbytes)

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self.nbytes -= item[1]
            return item[0]

    def drop_where(self, gone: Callable[[Hashable, V], bool]) -> None:
        """Forget every entry for which ``gone(key, value)`` is true."""
        with self._lock:
            for key in [k for k, (v, _) in self._items.items() if gone(k, v)]:
                self.nbytes -= self._items.pop(key)[1]

    def items(self) -> list[tuple[Hashable, V]]:
        """A snapshot, least recently used first."""
        with self._lock:
            return [(k, v) for k, (v, _) in self._items.items()]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


def megabytes(env_value: str | None, default_mb: float) -> int:
    """A budget in bytes from an environment variable in MB (``CNNVIZ_KEPT_MB=512``), else the default.

    >>> megabytes("1.5", 64), megabytes(None, 64)
    (1572864, 67108864)
    """
    return int(float(env_value if env_value not in (None, "") else default_mb) * 2**20)
