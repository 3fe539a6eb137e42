"""Errors a user can cause, and the wording every message shares (quoting, close matches, counts, shapes).
Their messages are plain sentences meant to be shown as they are."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class CnnvizError(ValueError):
    """Base class: the message says what was wrong and what is valid."""


class UnknownModelError(CnnvizError):
    """A model name that is not in the registry nor in torchvision's or timm's lists."""


class UnknownLayerError(CnnvizError):
    """A layer name that is not a module of the model with a 4-D output."""


class InvalidImageError(CnnvizError):
    """An upload that is not a readable image, or one that is too large."""


class InvalidOptionError(CnnvizError):
    """An option value outside its valid range."""


class CheckpointError(CnnvizError):
    """A user's checkpoint that cannot be read safely, or does not fit the architecture named for it."""


class CollectionError(CnnvizError):
    """An image collection that cannot be used: a folder with no images, or a zip refused as unsafe or damaged."""


MAX_QUOTE = 80  # characters of user input a message may repeat
_ALLOCATION_FAILED = ("can't allocate memory", "not enough memory", "out of memory")  # CPU and CUDA allocators


def is_allocation_failure(error: BaseException) -> bool:
    """True when ``error`` says memory ran out: ``MemoryError``, torch's "DefaultCPUAllocator: can't
    allocate memory" (alloc_cpu.cpp) or CUDA's ``OutOfMemoryError`` (a RuntimeError saying "out of memory").

    >>> is_allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    True
    >>> is_allocation_failure(RuntimeError("shape mismatch"))
    False
    """
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _ALLOCATION_FAILED)
    )


def quoted(value: object, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that repeat what a user sent.

    >>> quoted("x" * 500)[:6], len(quoted("x" * 500))
    ("'xxxxx", 80)
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def did_you_mean(name: str, candidates: Iterable[str], n: int = 5, cutoff: float = 0.6) -> str:
    """" Did you mean: a, b?" with the closest distinct candidates (compared without case), or "".

    >>> did_you_mean("ResNet5O", ["resnet50", "resnet50", "resnet101", "vgg16"])
    ' Did you mean: resnet50, resnet101?'
    """
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=cutoff)
    return f" Did you mean: {', '.join(by_lower[c] for c in close)}?" if close else ""


def plural(count: int, word: str, many: str | None = None) -> str:
    """``"1 key"``, ``"3 keys"``, ``"2 entries"`` (``many``: the plural when it is not ``word + "s"``).

    >>> plural(1, "key"), plural(3, "key"), plural(2, "entry", "entries")
    ('1 key', '3 keys', '2 entries')
    """
    return f"{count} {word if count == 1 else many or word + 's'}"


def shape_text(shape: Sequence[int]) -> str:
    """``"32×64×3×3"`` (``"scalar"`` for a 0-d tensor).

    >>> shape_text((32, 64, 3, 3)), shape_text(())
    ('32×64×3×3', 'scalar')
    """
    return "×".join(str(int(d)) for d in shape) or "scalar"
