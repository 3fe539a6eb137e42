"""Explanation-quality budget, as ratios measured in one run (issue 19): deletion + insertion for one map
(with Average Drop's masked input riding in the same batch) ≤ 1.2× the forward passes they need — torchcam's
2S − 1 = 39 perturbed inputs at its default S = 20, timed as one bare batched forward of those very inputs,
built beforehand. Also: the same work bare (the unperturbed pass and the batch of 40 ours runs), and
torchcam 0.5.0's own DeletionInsertionMetric + ClassificationMetric on the same map (its default batch of 32,
each metric with its own unperturbed pass). ResNet-18 (random weights) and the bundled EfficientNet-Lite0,
224 px, CPU.

The four are timed in interleaved rounds (one of each per round), so a neighbour's burst on a shared machine
hits them alike; the medians and the minimums are printed, with the ratios of both. One thread by default
(``BENCH_THREADS`` to change it): steadier where other processes share the cores.

    python bench/quality.py
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnviz import preprocess, quality  # noqa: E402
from cnnviz.attribution import class_activation_map  # noqa: E402
from cnnviz.loading import load_model  # noqa: E402

IMAGE = "examples/coffee.png"
STEPS = 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))


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
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    print(f"torch threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
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

        timed = {"floor": floor, "same": same_work, "ours": ours, "torchcam": torchcam_metrics}
        for fn in timed.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in timed}
        for _ in range(ROUNDS):
            for key, fn in timed.items():
                start = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - start) * 1e3)
        for how, pick in (("median", statistics.median), ("min", min)):
            t = {k: pick(v) for k, v in times.items()}
            print(f"{name} [{how} of {ROUNDS}]: 2S−1 = {2 * STEPS - 1} perturbed inputs in one bare batched forward "
                  f"{t['floor']:.0f} ms · the same work bare (1 + 40 inputs) {t['same']:.0f} ms · ours (deletion + "
                  f"insertion + Average Drop) {t['ours']:.0f} ms = {t['ours'] / t['floor']:.2f}× the 2S−1 floor "
                  f"(budget ≤ 1.2×), {t['ours'] / t['same']:.2f}× the same work bare · torchcam's two metrics on the "
                  f"same map {t['torchcam']:.0f} ms (ours {t['ours'] / t['torchcam']:.2f}× theirs)")


if __name__ == "__main__":
    main()
