"""The Ray engine (issue 18, dataset examples): on a small collection with bad files it gives the same
reductions as the in-process engine, image by image; it stops when asked; it reads channels-last layers;
and the local Ray it starts leaves no process behind. One local Ray (2 CPUs) serves the whole module; its
start and its workers' (each imports torch) make the module take about 40 s on two cores."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ray.data")

import cnnviz  # noqa: E402
from cnnviz.dataset import ray_engine  # noqa: E402
from cnnviz.dataset.engine import EngineJob, Item, run_local  # noqa: E402
from cnnviz.layers import find_layers, get_layer  # noqa: E402
from cnnviz.loading import IMAGENET_MEAN, IMAGENET_STD, module_transform  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.fixtures import custom_net  # noqa: E402

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.slow
GOOD = 24


def _ray_processes() -> list:
    """This process's descendants that belong to Ray (raylet, GCS, workers), alive."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE and "ray" in " ".join(child.cmdline()).lower():
                found.append(child)
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module, started by the engine's own connect(); gone, processes and all, after."""
    assert ray_engine.connect(num_cpus=2) is True
    assert ray_engine.connect() is False  # the running one is reused
    assert _ray_processes()  # what the check below looks for exists while Ray runs
    yield
    assert ray_engine.shutdown() is True and ray_engine.shutdown() is False
    deadline = time.monotonic() + 30
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(), "Ray left processes behind"


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> list[Item]:
    """24 seeded pictures of varied sizes and content (noise, gradients, blocks), and three bad files: a
    truncated PNG, an empty file, text named .png."""
    folder = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(18)
    paths = []
    for i in range(GOOD):
        h, w = int(rng.integers(64, 300)), int(rng.integers(64, 300))
        kind = i % 3
        if kind == 0:
            pixels = rng.integers(0, 256, (h, w, 3))
        elif kind == 1:
            ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, 3)
            pixels = np.broadcast_to(ramp, (h, w, 3)) + rng.normal(0, 8, (h, w, 3))
        else:
            pixels = np.full((h, w, 3), rng.integers(0, 256, 3))
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            pixels[y: y + h // 3, x: x + w // 3] = rng.integers(0, 256, 3)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    truncated = folder / "truncated.png"
    truncated.write_bytes(paths[0].read_bytes()[:200])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("not a picture at all\n" * 20)
    paths[5:5] = [truncated]
    paths[13:13] = [empty]
    paths.append(text)
    return [Item(i, str(p)) for i, p in enumerate(paths)]


def _by_image(batches) -> tuple[dict, dict]:
    """Per image id, per layer, its row of each reduction; and the skipped ids with their reasons."""
    rows, skipped = {}, {}
    for batch in batches:
        for layer, reduced in batch.reduced.items():
            assert len(reduced.value) == len(batch.ids)
            for row, image in enumerate(batch.ids):
                rows.setdefault(image, {})[layer] = (reduced.value[row], reduced.y[row], reduced.x[row], reduced.mean[row],
                                                     reduced.positive[row], reduced.positions)
        for image, reason in batch.skipped:
            assert image not in skipped
            skipped[image] = reason
    return rows, skipped


def _assert_same(local: dict, ray: dict) -> None:
    assert sorted(local) == sorted(ray)
    for image in local:
        assert local[image].keys() == ray[image].keys()
        for layer in local[image]:
            (v1, y1, x1, m1, p1, n1), (v2, y2, x2, m2, p2, n2) = local[image][layer], ray[image][layer]
            assert v1.dtype == v2.dtype == np.float32 and m2.dtype == np.float64 and y2.dtype == np.int32
            np.testing.assert_array_equal(v1, v2)
            np.testing.assert_array_equal(y1, y2)
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(p1, p2)
            np.testing.assert_allclose(m1, m2, rtol=1e-9, atol=0)
            assert n1 == n2


@pytest.fixture(scope="module")
def resnet():
    loaded = cnnviz.load_model("resnet18", "random")
    return loaded, [get_layer(loaded, "layer1"), get_layer(loaded, "layer3")]


def test_ray_gives_the_local_engines_reductions_image_by_image(local_ray, collection, resnet):
    loaded, layers = resnet
    job = lambda: EngineJob(loaded.model, loaded.transform, layers, collection, batch_size=8, workers=0)  # noqa: E731
    local_rows, local_skipped = _by_image(run_local(job()))
    ray_rows, ray_skipped = _by_image(ray_engine.run_ray(job()))
    assert len(local_rows) == GOOD and set(local_skipped) == {5, 13, GOOD + 2}
    assert ray_skipped == local_skipped  # the same files, the same words
    assert "empty" in ray_skipped[13] and all(ray_skipped.values())
    _assert_same(local_rows, ray_rows)
    first = ray_rows[0]["layer3"]
    assert first[0].shape == (256,) and first[5] == 14 * 14


def test_stop_ends_the_pass_after_the_first_batch(local_ray, collection, resnet):
    loaded, layers = resnet
    seen = []
    job = EngineJob(loaded.model, loaded.transform, layers, collection, batch_size=4, stop=lambda: bool(seen))
    started = time.monotonic()
    for batch in ray_engine.run_ray(job):
        seen.append(batch)
    assert len(seen) == 1 and len(seen[0].ids) + len(seen[0].skipped) < len(collection)  # an actor's task: a batch or two
    assert time.monotonic() - started < 60
    # the engine is usable again at once (the stopped execution released its actors)
    again = EngineJob(loaded.model, loaded.transform, layers, collection[:3], batch_size=4)
    assert sorted(i for b in ray_engine.run_ray(again) for i in b.ids) == [0, 1, 2]


def test_a_channels_last_layer_reduces_as_locally(local_ray, collection):
    net = custom_net.build()
    size = custom_net.INPUT_SIZE
    listing = {layer.name: layer for layer in find_layers(net, size).layers}
    layers = [listing["block.norm"], listing["block.pwconv1"], listing["res"]]
    assert [layer.layout for layer in layers] == ["NHWC", "NHWC", "NCHW"]
    transform = module_transform(size, IMAGENET_MEAN, IMAGENET_STD)
    # batches of one: a Linear layer's GEMM sums in an order that depends on the batch's rows (see the report)
    job = lambda: EngineJob(net, transform, layers, collection[:8], batch_size=1, workers=0)  # noqa: E731
    local_rows, local_skipped = _by_image(run_local(job()))
    ray_rows, ray_skipped = _by_image(ray_engine.run_ray(job()))
    assert ray_skipped == local_skipped == {5: local_skipped[5]}
    _assert_same(local_rows, ray_rows)
    assert local_rows[0]["block.pwconv1"][0].shape == (128,)


def test_a_gpu_job_on_a_cluster_without_gpus_is_refused(local_ray, collection, resnet):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    loaded, layers = resnet
    job = EngineJob(loaded.model, loaded.transform, layers, collection[:2], batch_size=2, device="cuda")
    with pytest.raises(cnnviz.CnnvizError, match="no GPU"):
        next(ray_engine.run_ray(job))


def test_cnnviz_imports_without_ray_and_says_how_to_get_it(monkeypatch):
    code = "import sys, cnnviz, cnnviz.dataset.ray_engine; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
    monkeypatch.setitem(sys.modules, "ray", None)  # what a missing package looks like to `import ray`
    with pytest.raises(cnnviz.CnnvizError, match=r"pip install 'cnnviz\[ray\]'"):
        ray_engine.connect()


def test_both_engines_store_the_same_atlas(local_ray, collection, tmp_path):
    """Through the public API: the same examples (every order, several channels) and the same table."""
    folder = str(tmp_path / "photos")
    shutil.copytree(Path(collection[0].path).parent, folder)
    stores = {}
    for engine in ("local", "ray"):
        stores[engine] = tmp_path / engine
        report = cnnviz.atlas("resnet18", folder, layers=["layer1", "layer3"], weights="random", k=5, engine=engine,
                              data_dir=stores[engine], workers=0)
        assert report.complete and report.images == GOOD and len(report.skipped) == 3 and report.engine == engine
    for layer, channels in (("layer1", (0, 7, 63)), ("layer3", (0, 100, 255))):
        for order in ("top", "bottom", "random"):
            for channel in channels:
                local, ray = (cnnviz.dataset_examples("resnet18", layer, channel, data=folder, weights="random", k=5, order=order,
                                                      data_dir=stores[e]) for e in ("local", "ray"))
                assert [(e.path, e.value, e.y, e.x) for e in local] == [(e.path, e.value, e.y, e.x) for e in ray]
        tables = [cnnviz.collection_table("resnet18", layer, data=folder, weights="random", data_dir=stores[e]) for e in ("local", "ray")]
        np.testing.assert_array_equal(tables[0].maximum, tables[1].maximum)
        np.testing.assert_allclose(tables[0].mean, tables[1].mean, rtol=1e-9)
        np.testing.assert_array_equal(tables[0].active_share, tables[1].active_share)
