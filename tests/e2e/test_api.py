"""The public HTTP API, through gradio_client, against the app served by ``python app.py``.

* the three documented endpoints exist under their documented names;
* /architecture: totals, table, CSV and text equal what ``cnnviz.architecture`` computes (torchvision and timm);
* /filters: the image is exactly ``cnnviz.filter_grid``'s grid (its size for random weights, every pixel
  for the bundled pretrained weights);
* /feature_maps: the grid for examples/cat.png at ``layer1.0.conv1`` has the library's size, the caption
  names the layer, and efficientnet_lite0 (pretrained, bundled) calls examples/coffee.png "espresso"
  with the library's grid (up to JPEG loss); ``layer`` may be left out (documented as optional);
* user mistakes (unknown model, unknown layer, a text file renamed .png) come back as AppError with a
  readable sentence, and the server answers the next request.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import cnnviz

from .conftest import EXAMPLES

pytestmark = pytest.mark.e2e

DOCUMENTED = {"/architecture", "/filters", "/feature_maps", "/channel", "/layer_stats", "/activations", "/channel_visualization",
              "/attribution", "/projection", "/guided_gradcam", "/compare", "/load_checkpoint", "/atlas", "/atlas_job",
              "/dataset_examples", "/collection_table", "/intervene", "/channel_importance",
              "/explanation_quality"}


def _named_endpoints(client) -> list[str]:
    return list(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def endpoint(client, name: str) -> str:
    """The public endpoint for ``name``, exactly as documented (``/name``)."""
    names = _named_endpoints(client)
    assert f"/{name}" in names, f"no public endpoint /{name} among {names}"
    return f"/{name}"


def assert_readable(message: str, *must_contain: str) -> None:
    """A sentence for a person: capitalised, punctuated, short, no traceback or exception class names."""
    message = message.strip()
    assert message, "empty error message"
    assert message[0].isupper(), message
    assert message[-1] in ".?!", message
    assert 20 < len(message) < 500, message
    assert "Traceback" not in message and "File \"" not in message, message
    assert not re.search(r"\b\w+(Error|Exception):", message), message
    for part in must_contain:
        assert part in message, f"{part!r} not in {message!r}"


def assert_still_serving(client) -> None:
    image, caption = client.predict(model="resnet18", weights="random", api_name=endpoint(client, "filters"))
    grid = cnnviz.filter_grid("resnet18", "random").image  # what the library draws: the server answers the same
    assert np.array_equal(np.asarray(Image.open(image).convert("RGB")), grid) and caption.startswith("`conv1`")


def test_public_endpoints_have_the_documented_names(client):
    """The README/brief promise /architecture, /filters and /feature_maps (see app bug report)."""
    assert set(_named_endpoints(client)) == DOCUMENTED


@pytest.mark.parametrize(
    "model, weights",
    [("resnet18", "random"), ("timm/resnet50.a1_in1k", "random"), ("timm/tf_efficientnet_lite0", "pretrained")],
)
def test_architecture_matches_library(client, library, model, weights):
    totals, table, csv_path, text = client.predict(
        model=model, weights=weights, depth=3, api_name=endpoint(client, "architecture")
    )
    truth = library.architecture(model, weights, 3)
    assert f"**parameters** {truth.total_params:,} " in totals
    assert f"({truth.trainable_params:,} trainable" in totals
    assert len(table["data"]) == len(truth.rows)
    assert [row[0] for row in table["data"]] == [r.name for r in truth.rows]
    assert [row[5] for row in table["data"]] == [r.params for r in truth.rows]
    with open(csv_path, encoding="utf-8") as f:
        assert f.read() == truth.to_csv()
    assert text == truth.to_text()


@pytest.mark.parametrize("model", ["resnet18", "timm/resnet50.a1_in1k"])
def test_filters_random_weights_have_library_grid_size(client, library, model):
    image, caption = client.predict(model=model, weights="random", api_name=endpoint(client, "filters"))
    truth = library.filter_grid(model, "random")
    h, w = truth.image.shape[:2]
    assert Image.open(image).size == (w, h)
    assert caption.startswith(f"`{truth.filters.layer}`")


def test_filters_pretrained_are_the_library_grid_pixel_for_pixel(client, library):
    model = "timm/tf_efficientnet_lite0"
    image, caption = client.predict(model=model, weights="pretrained", api_name=endpoint(client, "filters"))
    truth = library.filter_grid(model, "pretrained")
    served = np.asarray(Image.open(image).convert("RGB"))
    assert served.shape == truth.image.shape
    assert np.array_equal(served, truth.image)
    assert caption.startswith("`conv_stem`") and "32 filters" in caption


@pytest.mark.parametrize("model, layer", [("resnet18", "layer1.0.conv1"), ("timm/resnet50.a1_in1k", "layer2.0.conv2")])
def test_feature_maps_grid_size_and_caption(client, library, model, layer):
    from gradio_client import handle_file

    cat = str(EXAMPLES / "cat.png")
    image, labels, caption = client.predict(
        model=model, image=handle_file(cat), layer=layer, weights="random", api_name="/feature_maps"
    )
    truth = library.feature_maps(model, cat, layer, "random")
    h, w = truth.image.shape[:2]
    assert Image.open(image).size == (w, h)
    c, lh, lw = truth.layer.shape
    assert caption.startswith(f"`{layer}` · {truth.layer.type} · {c}×{lh}×{lw}")
    assert len(labels["confidences"]) == 5


def test_feature_maps_pretrained_lite0_calls_coffee_espresso(client, library):
    from gradio_client import handle_file

    model, coffee = "timm/tf_efficientnet_lite0", str(EXAMPLES / "coffee.png")
    image, labels, caption = client.predict(
        model=model, image=handle_file(coffee), layer="", weights="pretrained", api_name="/feature_maps"
    )
    assert labels["label"] == "espresso"
    assert labels["confidences"][0]["confidence"] > 0.5
    truth = library.feature_maps(model, coffee, None, "pretrained")
    served = np.asarray(Image.open(image).convert("RGB"))
    assert served.shape == truth.image.shape
    # Same weights, same image, same CPU: the same grid, up to the JPEG encoding the app serves it in.
    assert np.abs(served.astype(int) - truth.image.astype(int)).mean() < 4.0
    assert caption.startswith("`conv_stem`")


def test_unknown_model_is_a_readable_error_and_server_keeps_serving(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(model="resnet_does_not_exist", weights="random", depth=3, api_name=endpoint(client, "architecture"))
    assert_readable(str(err.value), "Unknown model", "resnet_does_not_exist")
    with pytest.raises(AppError) as err:
        client.predict(model="timm/nope_net", weights="random", api_name=endpoint(client, "filters"))
    assert_readable(str(err.value), "Unknown model")
    assert_still_serving(client)


def test_unknown_layer_is_a_readable_error_and_server_keeps_serving(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(
            model="resnet18", image=handle_file(str(EXAMPLES / "cat.png")), layer="layer9.bogus",
            weights="random", api_name="/feature_maps",
        )
    assert_readable(str(err.value), "layer9.bogus", "ResNet-18")
    assert_still_serving(client)


def test_text_file_renamed_png_is_a_readable_error_and_server_keeps_serving(client, not_an_image):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(
            model="resnet18", image=handle_file(str(not_an_image)), layer="", weights="random",
            api_name="/feature_maps",
        )
    assert_readable(str(err.value), "not an image")
    assert_still_serving(client)


@pytest.mark.inner_loop  # the inner loop's one API test
def test_feature_maps_layer_is_optional(client):
    """``layer`` is documented as optional (empty: the first convolution), so a caller may leave it out."""
    from gradio_client import handle_file

    image, labels, caption = client.predict(
        model="resnet18", image=handle_file(str(EXAMPLES / "cat.png")), weights="random", api_name="/feature_maps"
    )
    assert caption.startswith("`conv1`")
