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
