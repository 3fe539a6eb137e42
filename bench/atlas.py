"""The atlas (dataset examples) against its floors, ratios measured in one run on this machine.

    python bench/atlas.py                                   # 1,000 images, resnet18 and EfficientNet-Lite0, RSS 500 vs 5,000
    python bench/atlas.py --images 200 --rss 100 500        # quicker
    python bench/atlas.py --ray                             # also the Ray engine (a local Ray on this machine)

Rows:
- **throughput**: the local engine (``cnnviz.atlas``, default layers = each stage's output, a fresh store)
  against a plain loop written here with the same decode and transform, the same ``DataLoader`` workers and
  batch size and the same forward pass, without hooks, reductions or a database: images/s and their ratio
  (the issue's floor: ≥ 0.8);
- **peak RSS**: a child process runs the atlas over N images (decode in-process, ``workers=0``, so its own
  ``ru_maxrss`` is the peak) for each N given: the ratio of the largest to the smallest (floor: ≤ 1.2; the
  state is heaps and running sums, so it should not grow with N);
- **lookup**: ``cnnviz.dataset_examples`` of one channel, top 9 with their crops, from the stored atlas
  (median of 20; floor ≤ 50 ms);
- **ray** (with ``--ray``): the Ray engine's images/s against the local engine's (floor: ≥ 0.6).

The collection is synthetic (JPEGs of seeded noise and shapes, 320×240): decoding costs what a photo costs.
Random weights: the cost does not depend on their values. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cnnviz  # noqa: E402
from cnnviz.dataset import engine  # noqa: E402
from cnnviz.dataset.job import default_batch_size  # noqa: E402
from cnnviz.explore import default_atlas_layers  # noqa: E402

MODELS = ["resnet18", "timm/tf_efficientnet_lite0"]


def make_images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(len(list(folder.glob("*.jpg"))), n):
        picture = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(4):
            x, y = rng.integers(0, 280), rng.integers(0, 200)
            draw.ellipse([x, y, x + 40, y + 40], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        picture.save(folder / f"{i:06d}.jpg", quality=90)
    return folder


def plain_loop(model_name: str, folder: Path, batch: int, workers: int) -> float:
    """Images/s of decode + transform + forward, nothing else."""
    loaded = cnnviz.load_model(model_name, "random")
    items = [engine.Item(i, str(p)) for i, p in enumerate(sorted(folder.glob("*.jpg")))]
    loader = DataLoader(_Plain(items, loaded.transform), batch_size=batch,
                        num_workers=workers, prefetch_factor=2 if workers else None)
    started = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            loaded.model(x.to(loaded.device))
    return len(items) / (time.perf_counter() - started)


class _Plain(torch.utils.data.Dataset):
    def __init__(self, items, transform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return engine.decode(self.items[index].path, self.transform)


def atlas_rate(model_name: str, folder: Path, batch: int, workers: int, engine_name: str = "local") -> float:
    with tempfile.TemporaryDirectory() as store:
        report = cnnviz.atlas(model_name, folder, weights="random", data_dir=store, batch_size=batch, workers=workers, engine=engine_name)
    return report.new / report.seconds


CHILD = """
import json, resource, sys, tempfile
import cnnviz
with tempfile.TemporaryDirectory() as store:
    report = cnnviz.atlas(sys.argv[1], sys.argv[2], weights="random", data_dir=store, workers=0)
print(json.dumps({"images": report.new, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(model_name: str, folder: Path, n: int) -> dict:
    subset = folder.parent / f"subset-{n}"
    subset.mkdir(exist_ok=True)
    for path in sorted(folder.glob("*.jpg"))[:n]:
        link = subset / path.name
        if not link.exists():
            link.write_bytes(path.read_bytes())
    done = subprocess.run([sys.executable, "-c", CHILD, model_name, str(subset)], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def lookup_ms(model_name: str, folder: Path) -> float:
    with tempfile.TemporaryDirectory() as store:
        loaded = cnnviz.load_model(model_name, "random")
        layer = default_atlas_layers(loaded)[-1].name
        cnnviz.atlas(loaded, folder, layers=[layer], weights="random", data_dir=store)
        times = []
        for channel in range(21):
            started = time.perf_counter()
            found = cnnviz.dataset_examples(loaded, layer, channel, data=folder, weights="random", k=9, data_dir=store)
            times.append(time.perf_counter() - started)
            assert len(found) == 9
        return statistics.median(times[1:]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rss", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--ray", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnviz-bench-atlas-"))
    folder = make_images(work / "images", max(args.images, *args.rss))
    one = work / "run"
    one.mkdir()
    for path in sorted(folder.glob("*.jpg"))[: args.images]:
        (one / path.name).write_bytes(path.read_bytes())
    workers = engine.default_workers()
    print(f"{args.images} images of 320x240 (JPEG), {workers} decode workers, torch threads {torch.get_num_threads()}, "
          f"cores {os.cpu_count()}")
    for model_name in args.models:
        loaded = cnnviz.load_model(model_name, "random")
        batch = default_batch_size(default_atlas_layers(loaded), str(loaded.device))
        plain_loop(model_name, one, batch, workers)  # warm: page cache, thread pools
        plain = plain_loop(model_name, one, batch, workers)
        ours = atlas_rate(model_name, one, batch, workers)
        print(f"throughput  {model_name:28s} batch {batch:3d}: atlas {ours:6.1f} img/s, plain loop {plain:6.1f} img/s, "
              f"ratio {ours / plain:.2f} (floor 0.8)")
        if args.ray:
            ray = atlas_rate(model_name, one, batch, workers, "ray")
            print(f"ray         {model_name:28s}: ray {ray:6.1f} img/s vs local {ours:6.1f} img/s, ratio {ray / ours:.2f} (floor 0.6)")
        print(f"lookup      {model_name:28s}: top 9 with crops, median {lookup_ms(model_name, one):.1f} ms (floor 50 ms)")
    peaks = {n: peak_rss(args.models[0], folder, n) for n in args.rss}
    for n, found in peaks.items():
        print(f"peak RSS    {args.models[0]:28s} {n:6d} images: {found['peak_mb']:.0f} MB")
    small, large = min(peaks), max(peaks)
    print(f"peak RSS ratio {large} / {small} images: {peaks[large]['peak_mb'] / peaks[small]['peak_mb']:.2f} (floor 1.2)")


if __name__ == "__main__":
    main()
