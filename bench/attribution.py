"""Attribution budgets, as ratios measured in one run (issue 10): a Grad-CAM request vs the model's
forward pass (≤ 3.5×), our overhead vs calling torchcam directly (≤ 1.15×), a projection vs the
forward pass (≤ 4×). ResNet-18 (random weights) and the bundled EfficientNet-Lite0, 224 px, CPU.

    python bench/attribution.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import median_ms  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)
from cnnviz import explore, preprocess  # noqa: E402
from cnnviz.attribution import class_activation_map, default_layer, project  # noqa: E402
from cnnviz.loading import load_model  # noqa: E402

IMAGE = "examples/coffee.png"


def best(fn, repeat: int = 7) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs after one warm-up (bench.py's timer)."""
    return median_ms(fn, repeat) / 1e3


def main() -> None:
    for name, weights in (("resnet18", "random"), ("timm/tf_efficientnet_lite0", "pretrained")):
        loaded = load_model(name, weights)
        x = preprocess.model_input(loaded, IMAGE).x
        layer = default_layer(loaded)

        def forward():
            with torch.no_grad():
                loaded.model(x)

        def direct():
            from torchcam.methods import GradCAM
            with torch.enable_grad(), GradCAM(loaded.model, layer.name) as cam:
                scores = loaded.model(x.clone().requires_grad_(True))
                cam(int(scores[0].argmax()), scores, normalized=False)

        t_forward = best(forward)
        t_direct = best(direct)
        t_ours = best(lambda: class_activation_map(loaded, x, "gradcam", None, layer))
        t_request = best(lambda: explore.attribution(name, IMAGE, weights=weights))
        t_projection = best(lambda: project(loaded, x, layer, 0))
        print(f"{name} ({layer.name}): forward {t_forward * 1e3:.1f} ms · torchcam direct {t_direct * 1e3:.1f} ms · "
              f"ours {t_ours * 1e3:.1f} ms ({t_ours / t_direct:.2f}× direct) · whole request {t_request * 1e3:.1f} ms "
              f"({t_request / t_forward:.2f}× forward) · projection {t_projection * 1e3:.1f} ms ({t_projection / t_forward:.2f}× forward)")


if __name__ == "__main__":
    main()
