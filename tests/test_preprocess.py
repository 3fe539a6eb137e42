"""Preprocessing is the model's own, and uploads decode safely into upright RGB images."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz import loading, preprocess
from cnnviz.errors import InvalidImageError


def test_torchvision_transform_is_the_weights_own(coffee):
    from torchvision.models import get_model_weights

    loaded = loading.load_model("efficientnet_b0", "random")
    reference = get_model_weights("efficientnet_b0").DEFAULT.transforms()
    image = preprocess.open_image(coffee)
    torch.testing.assert_close(preprocess.to_input(loaded, image)[0], reference(image))
    assert loaded.input_size == (3, 224, 224)
    assert loaded.categories == tuple(get_model_weights("efficientnet_b0").DEFAULT.meta["categories"])


def test_timm_transform_is_the_data_config(coffee):
    import timm
    from timm.data import create_transform, resolve_model_data_config

    loaded = loading.load_model("timm/convnext_tiny.fb_in1k", "random")
    cfg = resolve_model_data_config(timm.create_model("convnext_tiny.fb_in1k", pretrained=False))
    image = preprocess.open_image(coffee)
    torch.testing.assert_close(preprocess.to_input(loaded, image)[0], create_transform(**cfg)(image))
    assert loaded.input_size == tuple(cfg["input_size"])
    assert loaded.categories[0] == "tench" and len(loaded.categories) == 1000


def _save(tmp_path, image: Image.Image, name: str, **kw) -> str:
    path = tmp_path / name
    image.save(path, **kw)
    return str(path)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = preprocess.open_image(_save(tmp_path, image, "r.jpg", exif=exif))
    assert out.size == (20, 40)


def test_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent: composited on white
    assert preprocess.open_image(_save(tmp_path, rgba, "a.png")).getpixel((0, 0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert preprocess.open_image(_save(tmp_path, grey16, "g16.png")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert preprocess.open_image(_save(tmp_path, cmyk, "c.jpg")).mode == "RGB"
    assert preprocess.open_image(np.zeros((4, 4), np.uint8)).mode == "RGB"


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [(b"", "empty.png", "empty"), (b"hello, I am text", "notes.png", "not an image"), (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", "not an image")],
)
def test_bad_files_get_a_sentence(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidImageError, match=message):
        preprocess.open_image(str(path))


def test_truncated_jpeg_and_bombs_are_refused(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:200])
    with pytest.raises(InvalidImageError):
        preprocess.open_image(str(tmp_path / "cut.jpg"))
    bomb = _save(tmp_path, Image.new("1", (20000, 20000)), "bomb.png")
    with pytest.raises(InvalidImageError, match="megapixels"):
        preprocess.open_image(bomb)


def test_no_image_is_a_sentence():
    with pytest.raises(InvalidImageError, match="No image"):
        preprocess.open_image(None)


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    image.info["transparency"] = 0  # index 0 (blue) is transparent → white after compositing
    return image


def _animated(tmp_path) -> str:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return str(path)


@pytest.mark.parametrize(
    ("make", "size", "pixel"),
    [
        (lambda tmp: _save(tmp, _palette_with_transparency(), "pal.png", transparency=0), (16, 16), (255, 255, 255)),
        (_animated, (32, 32), (255, 0, 0)),  # the first frame
        (lambda tmp: _save(tmp, Image.new("RGB", (1, 1), (0, 255, 0)), "one.png"), (1, 1), (0, 255, 0)),
        (lambda tmp: _save(tmp, Image.new("L", (10000, 50), 128), "pano.png"), (preprocess.MAX_SIDE, 20), (128, 128, 128)),
        (lambda tmp: _save(tmp, Image.new("RGBA", (8, 8), (0, 0, 255, 255)), "opaque.webp", lossless=True), (8, 8), (0, 0, 255)),
    ],
)
def test_unusual_valid_images(tmp_path, make, size, pixel):
    image = preprocess.open_image(make(tmp_path))
    assert image.mode == "RGB" and image.size == size
    assert image.getpixel((0, 0)) == pixel


def test_pdf_renamed_to_jpg_is_refused(tmp_path):
    path = tmp_path / "paper.jpg"
    path.write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF")
    with pytest.raises(InvalidImageError, match="not an image"):
        preprocess.open_image(str(path))
