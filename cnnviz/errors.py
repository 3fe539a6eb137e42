"""Errors a user can cause. Their messages are plain sentences meant to be shown as they are."""
from __future__ import annotations


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


MAX_QUOTE = 80  # characters of user input a message may repeat


def quoted(value: object, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that repeat what a user sent.

    >>> quoted("x" * 500)[:6], len(quoted("x" * 500))
    ("'xxxxx", 80)
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
