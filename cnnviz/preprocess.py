"""From a user's file to the model's input: safe decoding (allow-listed formats, sizes checked before any
pixel is decoded), then the model's own transform (``LoadedModel.transform``, from :mod:`cnnviz.pretrained`).
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import cache
from .errors import InvalidImageError, quoted

if TYPE_CHECKING:
    from .loading import LoadedModel

MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
MAX_BYTES = 20 * 2**20  # larger files are refused before they are opened (the upload limit, for every source)
MAX_SIDE = 4096  # decoded images are shrunk to this longest side before preprocessing
# The only Pillow decoders ever used (JPEG includes the multi-picture JPEGs phones write). Anything
# else — EPS (which would start Ghostscript), PSD, ICO, PCX, … — is refused without reaching its decoder.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
NOT_AN_IMAGE = f"That file is not an image this app can read. Upload a {ACCEPTED} image."
TOO_BIG = f"The image is larger than the {MAX_PIXELS // 1_000_000} megapixels this app accepts. Upload a smaller image."

def open_image(source: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """Decode an image safely into an upright RGB PIL image.

    Refuses non-images and decompression bombs with :class:`InvalidImageError`; applies EXIF
    orientation, takes the first frame of animations, composites transparency onto white, scales
    16-bit and float images, and shrinks very large images to ``MAX_SIDE``.

    >>> open_image("examples/coffee.png").mode
    'RGB'
    """
    if source is None:
        raise InvalidImageError("No image given. Upload a photo (or pick an example) first.")
    if isinstance(source, np.ndarray):
        image = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open_file(source)
    try:
        image = _to_rgb(image)
    except (OSError, ValueError, SyntaxError) as e:
        raise InvalidImageError(f"The image could not be decoded ({e}). Upload a {ACCEPTED} file.") from e
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def _open_file(path: str | os.PathLike) -> Image.Image:
    name = os.path.basename(str(path))[:80]
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise InvalidImageError(f"The file {name!r} is empty or missing. Upload a {ACCEPTED} image.")
    if os.path.getsize(path) > MAX_BYTES:
        raise InvalidImageError(
            f"The file {name!r} is larger than the {MAX_BYTES // 2**20} MB this app accepts. Upload a smaller image."
        )
    too_big = TOO_BIG
    try:
        image = Image.open(path, formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise InvalidImageError(too_big) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InvalidImageError(
            f"The file {name!r} is not an image this app can read. Upload a {ACCEPTED} image."
        ) from e
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InvalidImageError(f"{too_big} (This one is {width}×{height} pixels.)")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def to_input(loaded: LoadedModel, image: Image.Image) -> torch.Tensor:
    """Apply the model's own transform: PIL RGB -> ``Tensor[1,3,H,W]`` float32 on the model's device."""
    return loaded.transform(image).unsqueeze(0).to(loaded.device)


def normalisation(transform) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of the ``Normalize`` step in a model's transform (torchvision's
    ``ImageClassification`` presets, or a ``Compose`` like timm's), or None when it has none."""
    stack = [transform]
    while stack:
        step = stack.pop()
        mean, std = getattr(step, "mean", None), getattr(step, "std", None)
        if mean is not None and std is not None:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
        stack.extend(reversed(getattr(step, "transforms", None) or ()))
    return None


def seen_image(loaded: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """The picture the model saw, ``uint8[H,W,3]``: its input ``x`` (``Tensor[1,3,H,W]``, after the
    model's resize, crop and normalisation) with the normalisation undone. A transform without a
    ``Normalize`` step is shown stretched to [0, 255] per channel.

    >>> from cnnviz.loading import load_model
    >>> loaded = load_model("resnet18", "random")
    >>> seen_image(loaded, to_input(loaded, open_image("examples/coffee.png"))).shape
    (224, 224, 3)
    """
    pixels = x[0].detach().to("cpu", torch.float32).numpy()  # numpy: no torch thread hand-offs for a small image
    found = normalisation(loaded.transform)
    if found is None:
        lo = pixels.min(axis=(1, 2), keepdims=True)
        hi = pixels.max(axis=(1, 2), keepdims=True)
        unit = (pixels - lo) / np.maximum(hi - lo, 1e-8)
    else:
        mean, std = (np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in found)
        unit = pixels * std + mean
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0).copy()


# --------------------------------------------------------------------------------------------------
# The model's input for a file, remembered per model: a layer switch on the same upload decodes nothing
# --------------------------------------------------------------------------------------------------

INPUTS_BYTES = 32 * 2**20  # per model: a 224 px input is 0.6 MB, a 600 px one 4.3 MB


@dataclass(frozen=True)
class ModelInput:
    x: torch.Tensor  # Tensor[1,3,H,W]: the model's input, after its own transform
    digest: bytes  # of x's values: the key of everything computed from this image
    source_size: tuple[int, int] | None  # (width, height) of the image before the model's resize and crop


def model_input(loaded: LoadedModel, image) -> ModelInput:
    """The model's input for ``image`` (a path, PIL image or array), its digest and the image's size before
    the model's resize and crop. A file already seen (same path, size and modification time) is not decoded
    and transformed again.

    >>> from cnnviz.loading import load_model
    >>> model_input(load_model("resnet18", "random"), "examples/coffee.png").x.shape
    torch.Size([1, 3, 224, 224])
    """
    key = None
    inputs = loaded.memo("preprocess.inputs", lambda: cache.Store("inputs", INPUTS_BYTES))
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        stat = os.stat(image)
        key = (os.fspath(image), stat.st_size, stat.st_mtime_ns)
        hit = inputs.get(key)
        if hit is not None:
            return hit
    picture = open_image(image)
    x = to_input(loaded, picture)
    found = ModelInput(x, hashlib.blake2b(x.cpu().numpy().tobytes(), digest_size=16).digest(), picture.size)
    return found if key is None else inputs.put(key, found, cache.nbytes_of(x))


# --------------------------------------------------------------------------------------------------
# Live frames (the webcam): checked and decoded in memory, nothing written to disk
# --------------------------------------------------------------------------------------------------

MIN_FRAME_SIDE = 16  # pixels; smaller frames carry nothing a model can see
MAX_FRAME_SIDE = 4096
MAX_FRAME_PIXELS = 3840 * 2160  # a 4K camera; anything larger is not a webcam frame
# An encoded frame: it arrives as base64 inside a request of at most 1 MB (the server's body limit), so
# 704 KB at most (a VGA JPEG, what the page asks the camera for, is ~50 KB; 1080p ~300 KB).
MAX_FRAME_BYTES = 704 * 2**10
FRAME_FORMATS = ("JPEG", "PNG", "WEBP")  # what browsers' canvas.toDataURL / toBlob produce


def _check_frame_size(width: int, height: int) -> None:
    if min(width, height) < MIN_FRAME_SIDE:
        raise InvalidImageError(
            f"The camera frame is {width}×{height} pixels; a frame needs at least {MIN_FRAME_SIDE} pixels "
            "on each side. Check that the camera is on and sending pictures."
        )
    if max(width, height) > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS:
        raise InvalidImageError(
            f"The camera frame is {width}×{height} pixels, larger than this app accepts "
            f"({MAX_FRAME_SIDE} px a side, {MAX_FRAME_PIXELS / 1e6:.1f} megapixels). Use a lower camera resolution."
        )


def check_frame(frame: object) -> np.ndarray:
    """``frame`` if it is a camera frame the live view can use: ``uint8[H,W,3]`` (or ``[H,W]`` grey,
    ``[H,W,4]`` RGBA), each side from 16 to 4096 pixels, at most 8.3 megapixels; else
    :class:`InvalidImageError` saying what was wrong.

    >>> check_frame(np.zeros((480, 640, 3), np.uint8)).shape
    (480, 640, 3)
    """
    if not isinstance(frame, np.ndarray):
        raise InvalidImageError(f"A camera frame must be an image array (uint8, height×width×3), not {type(frame).__name__}.")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise InvalidImageError(
            f"A camera frame must be height×width×3 (RGB), not an array of shape {quoted(tuple(frame.shape))}."
        )
    if frame.dtype != np.uint8:
        raise InvalidImageError(f"A camera frame must hold 8-bit values (uint8), not {frame.dtype}.")
    _check_frame_size(frame.shape[1], frame.shape[0])
    return frame


def decode_frame(data: bytes) -> np.ndarray:
    """A camera frame as a browser encodes it (JPEG, PNG or WebP bytes) -> ``uint8[H,W,3]``, decoded in
    memory. Only those three decoders are used, and the size is checked before any pixel is decoded.

    >>> jpeg = io.BytesIO(); Image.new("RGB", (48, 32)).save(jpeg, "JPEG")
    >>> decode_frame(jpeg.getvalue()).shape
    (32, 48, 3)
    """
    if not data:
        raise InvalidImageError("The camera sent an empty frame. Check that the camera is on.")
    if len(data) > MAX_FRAME_BYTES:
        raise InvalidImageError(
            f"The camera frame is {len(data) // 1024:,} KB; this app accepts frames up to "
            f"{MAX_FRAME_BYTES // 1024:,} KB. Use a lower camera resolution."
        )
    try:
        with Image.open(io.BytesIO(data), formats=FRAME_FORMATS) as image:
            _check_frame_size(*image.size)
            return np.asarray(image.convert("RGB"))
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise InvalidImageError("The camera frame is not a JPEG, PNG or WebP picture this app can read.") from e
