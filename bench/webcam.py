"""Live webcam speed: frames per second of the server's per-frame work against the physical limit.

    python bench/webcam.py                        # AlexNet and ResNet-18 at their first conv, CPU
    python bench/webcam.py --repeats 40 --e2e     # also end to end: the real app, Chromium's fake camera

The physical limit is ``1000 / forward-ms``: one plain forward pass (``torch.inference_mode``) of a
tensor already transformed, nothing else. Per frame, the server does more: decode the browser's
``data:image/jpeg;base64`` frame (640×480, as the page asks the camera for), the model's transform,
one hooked pass that gives the layer and the logits, top-5, draw the grid, encode it as JPEG and
base64 — :class:`cnnviz.ui.webcam.CameraFrame` ``.preprocess`` → :func:`cnnviz.ui.webcam.live_frame`
→ :class:`cnnviz.ui.webcam.LiveImage` ``.postprocess``, exactly what the stream event runs. Forward
and frame are timed alternately in one loop, so both see the same machine load; the ratio is the
figure to read (the budget: ≥ 0.5 for ResNet-18). Random weights (speed does not depend on them);
nothing here asserts a time.

``--e2e`` starts ``python app.py``, opens the Feature maps tab in Chromium with a fake camera
(``--use-fake-device-for-media-stream --use-fake-ui-for-media-stream``), starts the stream and counts
how often the live grid's ``src`` changes over ``--seconds`` s: what a user sees, including Gradio's
queue, the browser's own JPEG encoding and decoding, and Chromium's share of the same CPU.
"""
from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("CNNVIZ_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

MODELS = ["alexnet", "resnet18"]
PHOTO = ROOT / "examples" / "cat.png"
CAMERA = (640, 480)
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def camera_frames(count: int) -> list[str]:
    """``count`` different 640×480 frames as the page sends them: JPEG ``data:`` URLs (quality 0.92,
    Chromium's default for ``canvas.toDataURL("image/jpeg")``)."""
    import io

    base = np.asarray(Image.open(PHOTO).convert("RGB").resize(CAMERA))
    urls = []
    for i in range(count):
        frame = np.roll(base, 7 * i, axis=1)  # the scene moves: no two frames alike
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=92)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls


def bench_model(model: str, repeats: int) -> dict:
    """Median ms of one forward pass and of the server's whole per-frame work, timed alternately."""
    import gradio as gr
    from gradio.data_classes import ImageData

    from cnnviz import activations, explore, layers, preprocess, render
    from cnnviz.loading import load_model
    from cnnviz.ui import webcam

    loaded = load_model(model, "random")
    layer = explore.select_model(model, "random").default_layer
    with gr.Blocks():  # components need a Blocks context to be built
        camera = webcam.CameraFrame(sources=["webcam"], streaming=True, type="numpy")
        output = webcam.LiveImage(format="jpeg")
    urls = camera_frames(repeats + 2)
    x = preprocess.to_input(loaded, preprocess.open_image(np.asarray(Image.open(PHOTO).convert("RGB"))))

    def forward() -> None:
        with loaded.lock:
            activations.run(loaded.model, x)

    stages: dict[str, list[float]] = {"forward": [], "frame": [], "decode": [], "handler": [], "postprocess": [],
                                      "transform": [], "hooked pass": [], "draw": [], "encode": []}
    info = layers.get_layer(loaded, layer)

    def parts(array: np.ndarray) -> None:
        """The handler's pieces, timed one by one (where the time goes)."""
        t0 = time.perf_counter()
        xx = preprocess.to_input(loaded, preprocess.open_image(array))
        t1 = time.perf_counter()
        with loaded.lock:
            store, _ = activations.capture_layers(loaded, [info], xx, with_logits=True)
        t2 = time.perf_counter()
        grid = render.render_feature_maps(store[layer].numpy(), "auto", "channel", labels=list(range(len(store[layer]))),
                                          colour_bar=True)
        t3 = time.perf_counter()
        explore.encode(grid, "jpeg")
        t4 = time.perf_counter()
        for key, ms in zip(("transform", "hooked pass", "draw", "encode"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[key].append(ms * 1000)

    def frame(url: str) -> None:
        t0 = time.perf_counter()
        array = camera.preprocess(ImageData(url=url))
        t1 = time.perf_counter()
        jpeg, _top5, _caption = webcam.live_frame(model, array, layer, "random", "first", 64, "auto", "channel")
        t2 = time.perf_counter()
        output.postprocess(jpeg)
        t3 = time.perf_counter()
        stages["decode"].append((t1 - t0) * 1000)
        stages["handler"].append((t2 - t1) * 1000)
        stages["postprocess"].append((t3 - t2) * 1000)
        stages["frame"].append((t3 - t0) * 1000)

    forward()
    frame(urls[-1])  # warm up: first-call costs (allocator, LUTs) are not what a stream sees
    for key in stages:
        stages[key].clear()
    for i in range(repeats):
        start = time.perf_counter()
        forward()
        stages["forward"].append((time.perf_counter() - start) * 1000)
        frame(urls[i])
        parts(camera.preprocess(ImageData(url=urls[i])))
    medians = {key: statistics.median(values) for key, values in stages.items()}
    medians["model"], medians["layer"] = model, layer
    return medians


# ------------------------------------------------------------------------------------------- end to end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def e2e(models: list[str], seconds: float, url: str | None = None) -> list[dict]:
    """Output updates per second in Chromium with a fake camera, for each model at its first conv
    (on ``url``, an app already running offline on the CPU, or on ``python app.py`` started here)."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

    proc = log = None
    if url is None:
        port = _free_port()
        url = f"http://127.0.0.1:{port}/"
        temp = tempfile.mkdtemp(prefix="cnnviz-bench-")
        env = dict(os.environ, CNNVIZ_OFFLINE="1", CNNVIZ_DEVICE="cpu", GRADIO_TEMP_DIR=temp, PYTHONUNBUFFERED="1")
        log = open(Path(temp) / "server.log", "w")
        proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    results = []
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "config", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + FAKE_CAMERA)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_function("document.querySelector('#weights-notice')?.innerText.includes('·')")
            for model in models:
                box = page.get_by_label("Model")
                box.fill(model)
                box.press("Enter")
                page.wait_for_function(f"document.querySelector('#weights-notice')?.innerText.includes('`{model}`') || "
                                       f"document.querySelector('#weights-notice')?.innerText.includes('{model}')")
                page.get_by_role("tab", name="Feature maps", exact=True).click()
                if not page.locator("#webcam-input video").count():
                    page.get_by_text("Live webcam").click()
                    page.locator("#webcam-input").get_by_text("Click to Access Webcam").click()
                page.locator("#webcam-input button[aria-label='capture photo']").click()
                page.wait_for_function("document.querySelector('#webcam-caption')?.innerText.includes('ms per frame')")
                time.sleep(1.0)  # past the first frames
                changes = page.evaluate(
                    """async (ms) => { let last = null, changes = 0; const end = performance.now() + ms;
                       while (performance.now() < end) {
                         const src = document.querySelector('#webcam-maps img')?.src;
                         if (src && src !== last) { changes++; last = src; }
                         await new Promise(r => requestAnimationFrame(r)); }
                       return changes; }""",
                    seconds * 1000,
                )
                caption = next((line for line in page.inner_text("#webcam-caption").splitlines() if "ms per frame" in line), "")
                page.locator("#webcam-input button[aria-label='capture photo']").click()  # stop
                results.append({"model": model, "fps": (changes - 1) / seconds, "caption": caption})
                time.sleep(1.0)
            browser.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
            log.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--e2e", action="store_true", help="also through the real app in Chromium with a fake camera")
    parser.add_argument("--threads", type=int, help="torch CPU threads here (1 is steadier on a loaded machine)")
    parser.add_argument("--url", help="e2e: an app already running (offline, CPU) instead of starting one")
    parser.add_argument("--seconds", type=float, default=10.0, help="e2e: how long to count updates per model")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; camera frames {CAMERA[0]}×{CAMERA[1]} JPEG; "
          f"{args.repeats} frames per model, medians\n")
    print("| model | layer | forward ms | limit fps | frame ms (decode + handler + postprocess) | frame fps | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = [bench_model(model, args.repeats) for model in args.models]
    for r in rows:
        print(f"| {r['model']} | `{r['layer']}` | {r['forward']:.1f} | {1000 / r['forward']:.1f} | "
              f"{r['frame']:.1f} ({r['decode']:.1f} + {r['handler']:.1f} + {r['postprocess']:.1f}) | "
              f"{1000 / r['frame']:.1f} | **{r['forward'] / r['frame']:.2f}** |")
    print("\nWhere the handler's time goes (the same frames, each piece timed alone), ms:\n")
    print("| model | transform | hooked pass (layer + logits) | draw grid | encode JPEG | forward alone |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['transform']:.1f} | {r['hooked pass']:.1f} | {r['draw']:.1f} | {r['encode']:.1f} | {r['forward']:.1f} |")
    if args.e2e:
        print("\nEnd to end (the real app, Chromium's fake camera, grid updates seen by the page):\n")
        print("| model | updates per second | limit fps (in-process, same run) | ratio | server's own caption |")
        print("|---|---:|---:|---:|---|")
        for r in e2e(args.models, args.seconds, args.url):
            limit = 1000 / bench_model(r["model"], 10)["forward"]
            print(f"| {r['model']} | {r['fps']:.1f} | {limit:.1f} | {r['fps'] / limit:.2f} | {r['caption']} |")


if __name__ == "__main__":
    main()
