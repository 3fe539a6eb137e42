"""The cost model (cnnviz.budget) against measurements: for a few models across families, each heavy
request's estimated bytes and seconds beside what it really took, and their ratio (estimate / measured).

    python bench/budget.py                                   # the default models, 2 threads, CPU
    python bench/budget.py --models resnet18 vit_b_16 --threads 16
    python bench/budget.py --json --models resnet18          # one JSON object per row (tests/test_budget.py)

How memory is measured, and why this way: the peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` before each request) minus the resident size just before it. That is what the
operator pays for, and what the issue measured. It is honest only when freed memory goes back to the
system, so the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=131072``: every block over 128 KB
(every map) is its own mapping, resident when written, returned when freed, and the allocator cannot
hide a request's growth in memory an earlier one freed. ``tracemalloc`` does not see torch's
allocations, and counting tensor outputs misses what libraries free and reallocate.

Rows: a forward pass (no gradients); Grad-CAM at the default layer (its graph kept from that layer on);
Score-CAM, one batch of 8 masked copies (the first 8 channels of the default layer, so it runs in seconds
on any model); a guided-backprop projection from the default layer (captum, the whole graph); feature
visualisation, 4 steps and the final measuring pass, at a middle layer (explore.channel_visualization).
Each request runs once to warm up, then once measured. Random weights: cost does not depend on the values.
Prints measured figures only; nothing here asserts anything.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MMAP_THRESHOLD = "131072"  # bytes: every allocation above is its own mapping, returned to the system when freed
MODELS = ["resnet18", "efficientnet_b0", "efficientnet_b3", "convnext_tiny", "vit_b_16"]
SCORECAM_COPIES = 8
FEATUREVIS_STEPS = 4


def _reexec_with_honest_allocator() -> None:
    """Start again with :data:`MMAP_THRESHOLD` set: glibc reads it only when the process starts."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})


def _resident() -> tuple[int, int]:
    """(current, peak) resident bytes of this process (Linux ``VmRSS``, ``VmHWM``)."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def measure(fn) -> tuple[int, float]:
    """(peak bytes above the resident size before, seconds) of one call of ``fn``."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    before, _ = _resident()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return _resident()[1] - before, seconds


def rows(name: str):
    """(request, estimated Cost, measured bytes, measured seconds) for one model's heavy requests."""
    import torch

    from cnnviz import budget, explore, layers
    from cnnviz import featurevis as featurevis_room
    from cnnviz.attribution import class_activation_map, default_layer, project
    from cnnviz.loading import load_model

    loaded = load_model(name, "random")
    found = layers.list_layers(loaded)
    target = default_layer(loaded)
    x = torch.rand(1, *loaded.input_size, generator=torch.Generator().manual_seed(0))
    copies = dataclasses.replace(target, shape=(SCORECAM_COPIES, *target.shape[1:]))
    middle = next(info for info in found[len(found) // 2:] if info.calls == 1 and info.shape[1] > 1)

    def forward():
        with torch.no_grad():
            loaded.model(x)

    def scorecam_batch():
        from torchcam.methods import ScoreCAM

        nchw = {"NCHW": lambda t: t, "NHWC": lambda t: t.permute(0, 3, 1, 2),
                "tokens": lambda t: t[:, target.prefix:].reshape(1, *target.shape[1:], -1).permute(0, 3, 1, 2)}[target.layout]
        with torch.no_grad(), ScoreCAM(loaded.model, target.name, batch_size=SCORECAM_COPIES, input_shape=tuple(x.shape[1:]),
                                       reshape_transform=lambda t: nchw(t)[:, :SCORECAM_COPIES]) as extractor:
            extractor(int(loaded.model(x)[0].argmax()), normalized=False)

    seeds = iter(range(1, 100))

    def featurevis():
        explore.channel_visualization(name, middle.name, 0, FEATUREVIS_STEPS, "random", seed=next(seeds))

    size = featurevis_room.working_size(loaded, middle, None)
    requests = [
        ("forward", budget.forward_cost(loaded), forward),
        (f"Grad-CAM @{target.name}", budget.cam_cost(loaded, target, "gradcam"),
         lambda: class_activation_map(loaded, x, "gradcam", None, target)),
        (f"Score-CAM, {SCORECAM_COPIES} copies", budget.cam_cost(loaded, copies, "scorecam", SCORECAM_COPIES), scorecam_batch),
        (f"projection @{target.name}", budget.projection_cost(loaded, target), lambda: project(loaded, x, target, 0)),
        (f"featurevis {FEATUREVIS_STEPS} steps @{middle.name} {size[0]}px",
         budget.featurevis_step_cost(loaded, middle, size).repeated(FEATUREVIS_STEPS).then(budget.forward_cost(loaded)), featurevis),
    ]
    for what, estimate, fn in requests:
        fn()  # warm-up: first-call costs (allocator, primitive caches, the probe pass) are not the request's
        nbytes, seconds = measure(fn)
        yield what, estimate, nbytes, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a free Space has 2 vCPU)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    args = parser.parse_args()
    _reexec_with_honest_allocator()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("CNNVIZ_OFFLINE", "1")
    os.environ.setdefault("CNNVIZ_DEVICE", "cpu")
    import torch

    torch.set_num_threads(args.threads)
    if not args.json:
        print(f"## Estimated vs measured, CPU, {args.threads} threads, random weights\n")
        print("| model | request | est. MB | measured MB | est./meas. | est. s | measured s | est./meas. |")
        print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for what, estimate, nbytes, seconds in rows(name):
            if args.json:
                print(json.dumps({"model": name, "request": what, "estimated_bytes": estimate.nbytes, "bytes": nbytes,
                                  "estimated_seconds": estimate.seconds, "seconds": seconds}), flush=True)
            else:
                print(f"| {name} | {what} | {estimate.nbytes / 2**20:.1f} | {nbytes / 2**20:.1f} | "
                      f"{estimate.nbytes / max(nbytes, 1):.2f} | {estimate.seconds:.3f} | {seconds:.3f} | "
                      f"{estimate.seconds / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
