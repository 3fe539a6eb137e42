"""What a public link receives: odd files, hostile names, out-of-range options, oversized uploads,
and many clients at once. Each gets a result or a sentence, and the server keeps serving."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from .conftest import EXAMPLES
from .test_api import assert_readable, assert_still_serving

pytestmark = pytest.mark.e2e


def _maps(client, **kw):
    args = dict(model="resnet18", layer="layer1", weights="random")
    args.update(kw)
    return client.predict(api_name="/feature_maps", **args)


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/etc/passwd", "__import__('os').system('id')", "hf-hub:timm/resnet50", "resnet18; rm -rf /", "x" * 5000],
)
def test_hostile_model_names_are_refused_with_a_sentence(client, name):
    with pytest.raises(Exception) as e:
        client.predict(model=name, weights="random", api_name="/filters")
    assert_readable(str(e.value), "model")
    assert_still_serving(client)


def assert_names_value_and_valid(message: str, bad: str, valid: str) -> None:
    """Every parameter is checked by the app (ui.common.check_call), sliders' ranges included; the message
    names the bad value and what is valid."""
    assert "Traceback" not in message and bad in message and valid in message, message


@pytest.mark.parametrize(
    ("options", "bad", "valid"),
    [
        (dict(channels="some"), "some", "'first', 'top', 'top-max', 'dead', 'all'"),
        (dict(channels="top", n=0), "0", "from 1 to 4096"),
        (dict(channels="top", n=10**7), "10000000", "from 1 to 4096"),
        (dict(colormap="jet"), "jet", "'viridis'"),
        (dict(normalise="global"), "global", "'channel', 'layer'"),
        (dict(weights="imagenet"), "imagenet", "'pretrained', 'random'"),
    ],
)
def test_out_of_range_options_sent_straight_to_the_api(client, options, bad, valid):
    with pytest.raises(Exception) as e:
        _maps(client, image=handle_file(str(EXAMPLES / "cat.png")), **options)
    assert_names_value_and_valid(str(e.value), bad, valid)
    assert_still_serving(client)


def test_layer_outside_the_model_is_refused(client):
    with pytest.raises(Exception) as e:
        _maps(client, image=handle_file(str(EXAMPLES / "cat.png")), layer="layer1/../../fc")
    assert_readable(str(e.value), "has no layer")


def test_depth_out_of_range(client):
    with pytest.raises(Exception) as e:
        client.predict(model="resnet18", weights="random", depth=50, api_name="/architecture")
    assert_names_value_and_valid(str(e.value), "50", "from 1 to 8")


def test_exif_rotated_photo_arrives_upright(client, tmp_path):
    image = Image.new("RGB", (64, 32), "white")
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    grid, labels, caption = _maps(client, image=handle_file(str(path)))
    assert caption.startswith("`layer1`") and Image.open(grid).size[0] > 0


def test_oversized_upload_is_refused_and_the_server_lives(client, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(os.urandom(21 * 1024 * 1024))  # over the 20 MB limit
    with pytest.raises(Exception) as e:
        _maps(client, image=handle_file(str(path)))
    assert "large" in str(e.value).lower() or "size" in str(e.value).lower(), str(e.value)
    assert_still_serving(client)


def test_concurrent_clients_all_succeed_with_their_own_results(app_url):
    photos = [EXAMPLES / "cat.png", EXAMPLES / "coffee.png", EXAMPLES / "rocket.jpg"]
    models = ["resnet18", "timm/tf_efficientnet_lite0", "mobilenet_v3_large"]

    def one(i: int):
        client = Client(app_url, verbose=False)
        model, photo = models[i % 3], photos[i // 3 % 3]
        grid, labels, caption = client.predict(model=model, image=handle_file(str(photo)), layer="", weights="pretrained", api_name="/feature_maps")
        return model, photo.name, labels["label"] if labels else None, np.asarray(Image.open(grid)).shape

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(9)))
    assert len(results) == 9
    lite0 = {photo: label for model, photo, label, _ in results if model == "timm/tf_efficientnet_lite0"}
    assert lite0["coffee.png"] == "espresso" and lite0["cat.png"] in ("tabby", "tiger cat", "Egyptian cat")


def _sixteen_bit(path):
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(path)


def _cmyk(path):
    Image.new("CMYK", (64, 64), (0, 200, 200, 0)).save(path)


def _palette(path):
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 255] + [255, 128, 0] * 255)
    image.paste(0, (0, 0, 32, 64))
    image.save(path, transparency=0)


@pytest.mark.parametrize(("make", "name"), [(_sixteen_bit, "ramp16.png"), (_cmyk, "cmyk.jpg"), (_palette, "pal.png")])
def test_unusual_uploads_are_decoded_by_us_not_converted_on_the_way(client, tmp_path, make, name):
    """Gradio would convert these to RGB itself (clipping 16-bit to white); the maps must equal the library's."""
    import cnnviz

    path = tmp_path / name
    make(path)
    lite0 = "timm/tf_efficientnet_lite0"  # bundled weights: the server's model and ours are the same network
    grid, _, _ = _maps(client, model=lite0, weights="pretrained", image=handle_file(str(path)), layer="conv_stem")
    served = np.asarray(Image.open(grid).convert("RGB"), dtype=np.float32)
    truth = cnnviz.feature_maps(lite0, str(path), "conv_stem", "pretrained").image.astype(np.float32)
    assert served.shape == truth.shape
    assert np.abs(served - truth).mean() < 4  # JPEG, not another image
