"""Explanation-quality budget, as ratios measured in one run (issue 19): deletion + insertion for one map
(with Average Drop's masked input riding in the same batch) ≤ 1.2× the forward passes they need — torchcam's
2S − 1 = 39 perturbed inputs at its default S = 20, timed as one bare batched forward of those very inputs,
built beforehand. Also: the same work bare (the unperturbed pass and the batch of 40 ours runs), and
torchcam 0.5.0's own DeletionInsertionMetric + ClassificationMetric on the same map (its default batch of 32,
each metric with its own unperturbed pass). ResNet-18 (random weights) and the bundled EfficientNet-Lite0,
224 px, CPU.

    python bench/quality.py
"""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import median_ms  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)
from cnnviz import preprocess, quality  # noqa: E402
from cnnviz.attribution import class_activation_map  # noqa: E402
from cnnviz.loading import load_model  # noqa: E402

IMAGE = "examples/coffee.png"
STEPS = 20


class GivenMap:
    """torchcam's CAM-extractor protocol around one given map (so torchcam's metrics score that very map)."""

    def __init__(self, model, saliency, normalized):
        self.model, self.saliency, self.normalized = model, saliency, normalized

    def __call__(self, class_idx=None, scores=None, normalized=True, **_):
        m = self.saliency.clone()[None]
        if self.normalized:
            m = m - m.min()
            m = m / (m.max() + 1e-8)
        return [m]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def perturbed(x: torch.Tensor, saliency: torch.Tensor, steps: int) -> torch.Tensor:
    """The 2S − 1 perturbed inputs of deletion and insertion, built beforehand (not timed)."""
    _n, _c, h, w = x.shape
    resized = torch.nn.functional.interpolate(saliency[None, None], (h, w), mode="bilinear", align_corners=False)[0, 0]
    ranks = torch.argsort(torch.argsort(resized.flatten(), descending=True, stable=True))
    counts = quality.perturbed_counts(h * w, steps)
    inputs = [torch.zeros_like(x[0])]
    for count in counts[1:-1]:
        chosen = (ranks < count).reshape(h, w)
        inputs += [torch.where(chosen, 0.0, x[0]), torch.where(chosen, x[0], 0.0)]
    return torch.stack(inputs)


def main() -> None:
    print(f"torch threads: {torch.get_num_threads()}")
    for name, weights in (("resnet18", "random"), ("timm/tf_efficientnet_lite0", "pretrained")):
        loaded = load_model(name, weights)
        x = preprocess.model_input(loaded, IMAGE).x
        cam = class_activation_map(loaded, x, "gradcam")
        batch = perturbed(x, cam.map, STEPS)
        assert batch.shape[0] == 2 * STEPS - 1

        def floor():
            with torch.no_grad():
                loaded.model(batch)

        masked = torch.cat([batch, x])  # the same 40 inputs ours runs in one batch

        def same_work():
            with torch.no_grad():
                loaded.model(x)
                loaded.model(masked)

        def ours():
            quality.score_maps(loaded, x, {"gradcam": cam.map}, cam.class_index, STEPS)

        def torchcam_metrics():
            from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

            softmax = functools.partial(torch.softmax, dim=-1)
            di = DeletionInsertionMetric(GivenMap(loaded.model, cam.map, False), softmax, steps=STEPS)
            di.update(x.clone(), cam.class_index)
            ad = ClassificationMetric(GivenMap(loaded.model, cam.map, True), softmax)
            ad.update(x.clone(), cam.class_index)

        t_floor = median_ms(floor, 5)
        t_same = median_ms(same_work, 5)
        t_ours = median_ms(ours, 5)
        t_torchcam = median_ms(torchcam_metrics, 5)
        print(f"{name}: 2S−1 = {2 * STEPS - 1} perturbed inputs, one bare batched forward {t_floor:.0f} ms · "
              f"the same work bare (1 + 40 inputs) {t_same:.0f} ms · ours (deletion + insertion + Average Drop) "
              f"{t_ours:.0f} ms = {t_ours / t_floor:.2f}× the 2S−1 floor (budget ≤ 1.2×), {t_ours / t_same:.2f}× the "
              f"same work bare · torchcam's two metrics on the same map {t_torchcam:.0f} ms ({t_ours / t_torchcam:.2f}× ours/theirs)")


if __name__ == "__main__":
    main()
