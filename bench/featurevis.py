"""Speed and strength of feature visualisation (cnnviz.featurevis), measured in one run.

    python bench/featurevis.py                      # 2 threads (a free Space's 2 vCPU), CPU
    python bench/featurevis.py --threads 4 --steps 256 --ratio-steps 256

1. Time per optimisation step vs one forward + backward pass (gradient w.r.t. the input only) at the
   working resolution (128 px), both of the whole network and of the network up to the layer (a step
   stops there), on ResNet-18 (random weights: speed does not depend on the values).
2. 256 steps on ResNet-18 (layer3 and layer4, channel 0), in seconds, as a user waits for them.
3. The activation the generated image reaches vs the activations of the photos in examples/, on the
   bundled ImageNet-trained timm/tf_efficientnet_lite0 at a middle layer (blocks.3.1.bn1) for a few channels.

Prints markdown; nothing here is a test and nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CNNVIZ_OFFLINE", "1")
os.environ.setdefault("CNNVIZ_DEVICE", "cpu")

import torch  # noqa: E402

from bench import median_ms  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)
from cnnviz import explore, featurevis, layers, preprocess  # noqa: E402
from cnnviz.loading import load_model  # noqa: E402

PHOTOS = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".png", ".jpg"))


def median_s(fn, repeats: int) -> float:
    """Median seconds of ``fn`` (bench.py's timer, which warms up and syncs CUDA)."""
    return median_ms(fn, repeats, warmup=2) / 1e3


def forward_backward(model, x, info=None):
    """One forward pass (whole, or stopped after ``info``) and the input's gradient of a channel's mean."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        if info is None:
            out = model(x)[0, 0]
        else:
            out = featurevis._layer_output(model, info, x)[0].mean()
        torch.autograd.grad(out, [x])


def speed(args) -> None:
    loaded = load_model("resnet18", "random")
    mean_std = preprocess.normalisation(loaded.transform)
    size = featurevis.WORKING_SIZE
    x = torch.rand(1, 3, size, size)
    print(f"## Time per step vs forward + backward, ResNet-18, {size}×{size}, {torch.get_num_threads()} threads\n")
    print("| layer | step (ms) | fwd+bwd to the layer (ms) | fwd+bwd whole network (ms) | step / to the layer | step / whole |")
    print("|---|---|---|---|---|---|")
    whole = median_s(lambda: forward_backward(loaded.model, x), args.repeats)
    for name in ("layer2", "layer3", "layer4"):
        info = layers.get_layer(loaded, name)
        to_layer = median_s(lambda: forward_backward(loaded.model, x, info), args.repeats)
        n = args.repeats
        featurevis.visualize_channel(loaded.model, info, 0, (size, size), mean_std, steps=2)  # warm-up
        t = time.perf_counter()
        featurevis.visualize_channel(loaded.model, info, 0, (size, size), mean_std, steps=n, lock=loaded.lock)
        step = (time.perf_counter() - t) / n
        print(f"| {name} | {step * 1e3:.1f} | {to_layer * 1e3:.1f} | {whole * 1e3:.1f} | {step / to_layer:.2f} | {step / whole:.2f} |")
    print(f"\n## {args.steps} steps on ResNet-18 (explore.channel_visualization, uncached), {torch.get_num_threads()} threads\n")
    print("| layer | seconds |")
    print("|---|---|")
    for name in ("layer3", "layer4"):
        t = time.perf_counter()
        explore.channel_visualization("resnet18", name, 0, steps=args.steps, weights="random", seed=int(time.time()) % 1000)
        print(f"| {name} | {time.perf_counter() - t:.1f} |")


def strength(args) -> None:
    model, layer = "timm/tf_efficientnet_lite0", "blocks.3.1.bn1"
    loaded = load_model(model, "pretrained")
    info = layers.get_layer(loaded, layer)
    inputs = {p.name: preprocess.to_input(loaded, preprocess.open_image(p)) for p in PHOTOS}
    print(f"\n## Activation reached vs the example photos: {model} ({loaded.weights.source}), {layer}, "
          f"{args.ratio_steps} steps, seed 0\n")
    print("| channel | generated | " + " | ".join(inputs) + " | smallest ratio |")
    print("|---|---|" + "---|" * len(inputs) + "---|")
    for channel in args.channels:
        view = explore.channel_visualization(model, layer, channel, steps=args.ratio_steps, weights="pretrained")
        photos = [featurevis.channel_activation(loaded.model, info, channel, x) for x in inputs.values()]
        ratios = [view.activation / p if p > 0 else float("inf") for p in photos]
        cells = " | ".join(f"{p:.3g} ({r:.1f}×)" for p, r in zip(photos, ratios))
        print(f"| {channel} | {view.activation:.3g} | {cells} | {min(ratios):.1f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--ratio-steps", type=int, default=256)
    parser.add_argument("--channels", type=int, nargs="+", default=[0, 7, 42, 100, 300])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    speed(args)
    strength(args)


if __name__ == "__main__":
    main()
