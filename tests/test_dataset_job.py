"""The atlas job end to end on real files and a real model (random weights): examples against a brute-force
pass written here (one image at a time, through cnnviz.capture), lookups, new images only, changed images,
unreadable files, a job killed with SIGKILL and resumed, and the CLI."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnviz
from cnnviz.dataset import files
from cnnviz.errors import CnnvizError
from tests.fixtures.collections import make_collection

MODEL, LAYERS, K = "resnet18", ("layer1", "layer4"), 4


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return make_collection(tmp_path_factory.mktemp("collection"), per_class=6)


@pytest.fixture(scope="module")
def brute(collection):
    """{layer: (paths, float32[N,C] spatial maxima, int[N,C] flat argmax)} from one capture per image."""
    loaded = cnnviz.load_model(MODEL, "random")
    paths = [f.path for f in files.list_collection(collection).files]
    found = {layer: ([], [], []) for layer in LAYERS}
    for path in paths:
        x = cnnviz.preprocess.to_input(loaded, cnnviz.open_image(collection / path))
        with cnnviz.capture(loaded, list(LAYERS)) as maps:
            cnnviz.run(loaded.model, x)
        for layer in LAYERS:
            flat = maps[layer].reshape(maps[layer].shape[0], -1).numpy()
            found[layer][0].append(path)
            found[layer][1].append(flat.max(axis=1))
            found[layer][2].append(flat.argmax(axis=1))
    return {layer: (p, np.stack(v), np.stack(w)) for layer, (p, v, w) in found.items()}


def _atlas(collection, store, **kwargs):
    return cnnviz.atlas(MODEL, collection, layers=list(LAYERS), weights="random", k=K, data_dir=store, workers=0, **kwargs)


def _same_examples(collection, store_a, store_b, channels=(0, 5, 17)):
    for layer in LAYERS:
        for order in ("top", "bottom", "random"):
            for channel in channels:
                a = cnnviz.dataset_examples(MODEL, layer, channel, data=collection, weights="random", k=K, order=order, data_dir=store_a)
                b = cnnviz.dataset_examples(MODEL, layer, channel, data=collection, weights="random", k=K, order=order, data_dir=store_b)
                assert [(e.path, e.y, e.x) for e in a] == [(e.path, e.y, e.x) for e in b]
                np.testing.assert_allclose([e.value for e in a], [e.value for e in b], rtol=1e-5, atol=1e-6)


def test_the_top_images_equal_a_brute_force_pass_one_image_at_a_time(collection, brute, tmp_path):
    report = _atlas(collection, tmp_path)
    assert report.complete and report.layers == LAYERS and report.images == len(brute["layer1"][0]) and report.new == report.images
    for layer in LAYERS:
        paths, peak, where = brute[layer]
        width = cnnviz.get_layer(cnnviz.load_model(MODEL, "random"), layer).shape[2]
        for channel in (0, 3, 31, 63):
            shown = cnnviz.dataset_examples(MODEL, layer, channel, data=collection, weights="random", k=K, data_dir=tmp_path)
            expected = sorted(range(len(paths)), key=lambda i: (-peak[i, channel], paths[i]))[:K]
            assert [e.path for e in shown] == [paths[i] for i in expected]
            np.testing.assert_allclose([e.value for e in shown], peak[expected, channel], rtol=1e-4, atol=1e-5)
            assert [(e.y, e.x) for e in shown] == [divmod(int(where[i, channel]), width) for i in expected]
            for example in shown:  # the crop is the picture the model saw, inside its bounds
                top, left, bottom, right = example.box
                assert example.crop.shape == (bottom - top, right - left, 3) and example.crop.dtype == np.uint8


def test_the_collection_table_equals_numpy_over_the_brute_force_maxima(collection, brute, tmp_path):
    _atlas(collection, tmp_path)
    table = cnnviz.collection_table(MODEL, "layer4", data=collection, weights="random", data_dir=tmp_path)
    paths, peak, _ = brute["layer4"]
    np.testing.assert_allclose(table.maximum, peak.max(axis=0), rtol=1e-4, atol=1e-5)
    assert table.labels == ("faces", "not_faces", "scenes") or len(table.labels) >= 2
    assert table.to_csv().splitlines()[0].startswith("channel,mean,max")
    assert len(table.rows()) == 512


def test_a_second_run_is_a_lookup_and_new_images_are_the_only_ones_read(collection, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(collection, grown)
    first = _atlas(grown, tmp_path / "store")
    again = _atlas(grown, tmp_path / "store")
    assert again.new == 0 and again.images == first.images
    extra = grown / "scenes" / "zz-new.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(extra)
    more = _atlas(grown, tmp_path / "store")
    assert more.new == 1 and more.images == first.images + 1
    _atlas(grown, tmp_path / "fresh")
    _same_examples(grown, tmp_path / "store", tmp_path / "fresh")


def test_a_changed_or_removed_image_starts_the_atlas_afresh(collection, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(collection, changed)
    first = _atlas(changed, tmp_path / "store")
    victim = sorted(changed.rglob("*.png"))[0]
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = _atlas(changed, tmp_path / "store")
    assert again.new == first.images  # every image read again: a top-k cannot forget the old picture
    sorted(changed.rglob("*.png"))[1].unlink()
    fewer = _atlas(changed, tmp_path / "store")
    assert fewer.images == first.images - 1 and fewer.new == fewer.images
    _atlas(changed, tmp_path / "fresh")
    _same_examples(changed, tmp_path / "store", tmp_path / "fresh")


def test_unreadable_files_are_skipped_with_their_reason_and_not_tried_again(collection, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(collection, bad)
    (bad / "scenes" / "empty.png").write_bytes(b"")
    (bad / "scenes" / "text.png").write_text("not a picture")
    good = (bad / "scenes").glob("*.png").__next__().read_bytes()
    (bad / "scenes" / "truncated.png").write_bytes(good[: len(good) // 3])
    (bad / "scenes" / "notes.txt").write_text("hello")
    report = _atlas(bad, tmp_path / "store")
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) >= {"scenes/empty.png", "scenes/text.png", "scenes/truncated.png", "scenes/notes.txt"}
    assert "empty" in reasons["scenes/empty.png"] and "not an image" in reasons["scenes/text.png"]
    assert report.complete and report.images == len(files.list_collection(collection).files)
    again = _atlas(bad, tmp_path / "store")
    assert again.new == 0 and {s.path for s in again.skipped} == set(reasons)


def test_bad_queries_get_sentences(collection, tmp_path):
    with pytest.raises(CnnvizError, match="not a folder"):
        cnnviz.atlas(MODEL, tmp_path / "nowhere", weights="random", data_dir=tmp_path)
    with pytest.raises(CnnvizError, match="engine"):
        cnnviz.atlas(MODEL, collection, weights="random", engine="spark", data_dir=tmp_path)
    with pytest.raises(CnnvizError, match="Run the atlas first"):
        cnnviz.dataset_examples(MODEL, "layer2", 0, data=collection, weights="random", data_dir=tmp_path)
    _atlas(collection, tmp_path)
    with pytest.raises(CnnvizError, match="from 0 to 63"):
        cnnviz.dataset_examples(MODEL, "layer1", 64, data=collection, weights="random", data_dir=tmp_path)
    with pytest.raises(CnnvizError, match="order"):
        cnnviz.dataset_examples(MODEL, "layer1", 0, data=collection, weights="random", order="best", data_dir=tmp_path)
    with pytest.raises(CnnvizError, match="kept 4"):
        cnnviz.dataset_examples(MODEL, "layer1", 0, data=collection, weights="random", k=9, data_dir=tmp_path)


KILLABLE = """
import sys, time
import cnnviz
def slow(progress):
    time.sleep(0.4)  # a slow machine: time for the test to kill it between checkpoints
cnnviz.atlas("resnet18", sys.argv[1], layers=["layer1", "layer4"], weights="random", k=4, data_dir=sys.argv[2], workers=0,
             batch_size=2, progress=slow, checkpoint_images=4)
"""


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_a_job_killed_mid_pass_resumes_from_its_last_checkpoint(collection, tmp_path):
    store = tmp_path / "store"
    job = subprocess.Popen([sys.executable, "-c", KILLABLE, str(collection), str(store)], cwd=Path(__file__).parents[1])
    database = store / "atlas.sqlite3"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and job.poll() is None:
        if database.exists():
            with sqlite3.connect(database) as db:
                try:
                    done = db.execute("SELECT count(*) FROM atlas_images").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            if done >= 8:
                break
        time.sleep(0.1)
    assert job.poll() is None, "the job ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = _atlas(collection, store)
    total = len(files.list_collection(collection).files)
    assert resumed.complete and resumed.images == total and 0 < resumed.new < total
    _atlas(collection, tmp_path / "fresh")
    _same_examples(collection, store, tmp_path / "fresh")


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_the_cli_runs_the_atlas_and_prints_its_report(collection, tmp_path):
    done = subprocess.run([sys.executable, "-m", "cnnviz", "atlas", "--model", MODEL, "--weights", "random", "--data", str(collection),
                           "--layers", "layer4", "--k", "3", "--data-dir", str(tmp_path), "--workers", "0"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "images" in done.stdout and "layers: layer4" in done.stdout
    shown = cnnviz.dataset_examples(MODEL, "layer4", 0, data=collection, weights="random", k=3, data_dir=tmp_path)
    assert len(shown) == 3
