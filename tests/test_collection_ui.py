"""The Collection tab's handlers without a browser: collections by name only, the atlas job, the table and
the examples, and a zip uploaded to the page."""
from __future__ import annotations

import time
import zipfile

import gradio as gr
import pytest

from cnnviz.ui import collection
from tests.fixtures.collections import make_collection


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A collection named "faces" (the operator's --data), and a store of its own."""
    root = make_collection(tmp_path_factory.mktemp("faces"), per_class=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNVIZ_COLLECTIONS", f"faces={root}")
        mp.setenv("CNNVIZ_DATA_DIR", str(tmp_path_factory.mktemp("store")))
        yield root


def wait(job_id: str) -> tuple:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = collection.atlas_job(job_id)
        if answer[1] in ("done", "stopped", "failed"):
            return answer
        time.sleep(0.2)
    raise AssertionError("the atlas job did not finish in 120 s")


@pytest.mark.parametrize("name", ["/etc", "../x", "faces/../../etc", ""])
def test_a_collection_is_a_name_never_a_path(faces, name):
    for call in (lambda: collection.atlas("resnet18", "random", name, "layer4", 3),
                 lambda: collection.collection_table("resnet18", "random", name, "layer4")):
        with pytest.raises(gr.Error) as refused:
            call()
        text = refused.value.text if hasattr(refused.value, "text") else str(refused.value)
        assert "collection" in text.lower() and "/etc" not in text.replace(repr(name), "")


@pytest.mark.slow  # several seconds: the full run has it, the inner loop need not
def test_atlas_then_table_and_examples(faces):
    before = collection.view_page("resnet18", "random", "faces", "layer4", 0, 3, "top")
    assert before[0].startswith("ℹ️ No atlas of `layer4`") and str(faces) not in before[0]  # a hint that names no path
    job_id, state, line = collection.atlas("resnet18", "random", "faces", "layer4", 3)
    assert state in ("queued", "running", "done") and "faces" in line and str(faces) not in line
    _, state, line, skipped = wait(job_id)
    assert state == "done" and line.startswith("✅") and skipped == ""
    frame, caption = collection.collection_table("resnet18", "random", "faces", "layer4")
    assert list(frame.columns) == collection.TABLE_HEADERS and len(frame) == 512
    assert "whole collection" in caption and "6 images" in caption
    gallery, listed = collection.dataset_examples("resnet18", "random", "faces", "layer4", 5, 3, "top")
    assert len(gallery) == len(listed) == 3 and [e["value"] for e in listed] == sorted((e["value"] for e in listed), reverse=True)
    assert gallery[0][1] == f"{listed[0]['path']} · {listed[0]['value']:.3g}"
    with pytest.raises(gr.Error, match="Channel"):
        collection.dataset_examples("resnet18", "random", "faces", "layer4", 512, 3, "top")
    page = collection.poll(job_id, "resnet18", "random", "faces", "", 5, 3, "bottom")
    assert page[3] == "layer4" and page[5] is not None and len(page[7]) == 3  # done: the first built layer shown


def test_a_zip_uploaded_to_the_page_becomes_a_named_collection(faces, tmp_path):
    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(faces.rglob("*.png")):
            z.write(path, path.relative_to(faces).as_posix())
    picked = collection.zip_uploaded(str(archive))
    assert picked.value.startswith("upload/") and picked.value in picked.choices[-1]
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../evil.png", b"x")
    assert collection.zip_uploaded(str(bad)) == gr.skip()  # a warning toast with the library's sentence, no traceback
