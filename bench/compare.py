"""Compare budget, as a ratio measured in one run (issue 11): a compare request costs at most 1.1× the
single requests it is made of, on a new photo each time (models loaded, per-image caches cold).

The single requests are what a user would otherwise send for the same picture, one side at a time:
- ``filters``: ``filter_grid`` and ``predict`` for each side (the filter grid and the top-5);
- ``stages``: ``feature_maps`` of each side's first convolution and stage outputs (16 strongest channels);
- ``cam``: ``attribution`` for each side (B explaining A's class).

Library level (what the HTTP handlers call); PNG encoding and file writes come on top of both.

    python bench/compare.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import Photos, median_ms  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)
from cnnviz import explore, receptive  # noqa: E402
from cnnviz.layers import get_layer, list_layers  # noqa: E402
from cnnviz.loading import load_model  # noqa: E402

REPEATS = 7
PAIRS = (  # (A, weights A, B, weights B)
    ("timm/tf_efficientnet_lite0", "pretrained", "timm/tf_efficientnet_lite0", "random"),
    ("resnet18", "random", "timm/resnet50", "random"),
)


def stage_layers(model: str, weights: str) -> list[str]:
    loaded = load_model(model, weights)
    found = list_layers(loaded)
    return [get_layer(loaded, None).name] + [s.layer for s in receptive.list_stages(loaded, found)]


def singles(view: str, a: tuple[str, str], b: tuple[str, str], photo: str) -> None:
    if view == "filters":
        for model, weights in (a, b):
            explore.filter_grid(model, weights)
            explore.predict(model, photo, weights)
    elif view == "stages":
        for model, weights in (a, b):
            for layer in stage_layers(model, weights):
                explore.feature_maps(model, photo, layer, weights, channels="top", n=explore.COMPARE_TILES)
    else:
        first = explore.attribution(a[0], photo, weights=a[1])
        explore.attribution(b[0], photo, target=first.class_index, weights=b[1])


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        photos = Photos(Path(folder))
        print(f"{'pair':58} {'view':8} {'compare':>9} {'singles':>9} {'ratio':>6}  (median ms of {REPEATS}, new photo each)")
        for model_a, weights_a, model_b, weights_b in PAIRS:
            for view in explore.COMPARE_VIEWS:
                fresh = iter([photos() for _ in range(4 * (REPEATS + 1))])  # written before any timing
                together = median_ms(lambda: explore.compare(model_a, model_b, next(fresh), weights_a, weights_b, view), REPEATS)
                apart = median_ms(lambda: singles(view, (model_a, weights_a), (model_b, weights_b), next(fresh)), REPEATS)
                pair = f"{model_a} ({weights_a}) vs {model_b} ({weights_b})"
                print(f"{pair:58} {view:8} {together:9.1f} {apart:9.1f} {together / apart:6.2f}")


if __name__ == "__main__":
    main()
