"""Speed of CNN Explorer, measured in one run against its floors and against the seed's recipe.

    python bench/bench.py                 # all models, CPU (and CUDA when present)
    python bench/bench.py --models alexnet resnet18 --repeats 5 --no-server

Prints markdown tables of medians (ms) and ratios; nothing here is a test and nothing asserts a time.
Random weights are used (speed does not depend on the values), so it runs offline.
"""
from __future__ import annotations

import argparse
import importlib
import io
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

MODELS = ["alexnet", "resnet18", "resnet50", "vgg16", "timm/convnext_tiny.fb_in1k", "efficientnet_b0"]
PHOTO = ROOT / "examples" / "cat.png"


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class Photos:
    """A fresh variant of the photo per call, so per-image caches never hit where a new upload is measured."""

    def __init__(self, folder: Path) -> None:
        self.base = np.asarray(Image.open(PHOTO).convert("RGB")).copy()
        self.folder, self.count = folder, 0

    def __call__(self) -> str:
        self.count += 1
        variant = self.base.copy()
        h, w = variant.shape[:2]  # change the centre: corners are cropped away by the transforms
        variant[h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4] = [self.count % 256, self.count // 256 % 256, 7]
        path = self.folder / f"photo-{self.count}.png"
        Image.fromarray(variant).save(path)
        return str(path)


def seed_recipe(model: torch.nn.Module, layer_fn, x: torch.Tensor) -> None:
    """The blog post's way: run the layer, then an 8×8 grid of matplotlib subplots saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        maps = layer_fn(x)[0]
    fig = plt.figure(figsize=(8, 8))
    for i in range(min(64, maps.shape[0])):
        ax = fig.add_subplot(8, 8, i + 1)
        ax.imshow(maps[i].cpu().numpy(), cmap="gray")
        ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)


def bench_model(name: str, device: str, repeats: int, photos: Photos) -> dict[str, float]:
    import gradio as gr

    import cnnviz
    from cnnviz import activations, preprocess, ui

    page = importlib.import_module("cnnviz.ui.feature_maps")  # the tab's handlers (ui.feature_maps is the endpoint)

    os.environ["CNNVIZ_DEVICE"] = device
    loaded = cnnviz.load_model(name, "random", device)
    found = cnnviz.list_layers(loaded)
    first = cnnviz.feature_maps(name, photos(), None, "random").layer.name
    names = [layer.name for layer in found]
    picks = {"first": first, "middle": names[len(names) // 2], "last": names[-1]}
    x = preprocess.to_input(loaded, preprocess.open_image(str(PHOTO)))
    encoder = gr.Image(format="png")
    r: dict[str, float] = {}

    r["forward"] = median_ms(lambda: activations.run(loaded.model, x), repeats)
    for where, layer in picks.items():
        def to_layer(info=next(f for f in found if f.name == layer)):
            with activations.capture(loaded.model, [info], stop_early=True):
                activations.run(loaded.model, x)
        r[f"forward to {where}"] = median_ms(to_layer, repeats)

    def request(layer: str, path_fn) -> None:
        image, _, _ = ui.feature_maps(name, path_fn(), layer, "random")
        encoder.postprocess(image)

    for where, layer in picks.items():
        fresh = iter([photos() for _ in range(repeats + 1)])  # written before timing starts
        r[f"request {where} (new image)"] = median_ms(lambda layer=layer: request(layer, lambda: next(fresh)), repeats)
    first_switch = []
    for _ in range(repeats):  # a new image, then its first switch to another layer (kept when it fits the budget)
        path = photos()
        request(first, lambda: path)
        start = time.perf_counter()
        request(picks["middle"], lambda: path)
        first_switch.append((time.perf_counter() - start) * 1000)
    r["layer switch, first on an image"] = statistics.median(first_switch)
    cycle = iter([picks["last"], picks["first"], picks["middle"]] * (repeats + 2))
    r["layer switch, later ones"] = median_ms(lambda: request(next(cycle), lambda: path), repeats)
    r["layer switch in the page, later ones (maps + statistics)"] = median_ms(
        lambda: page.show(name, path, next(cycle), "random", "first", 64, "auto", "channel", None, 0.5), repeats)
    middle = picks["middle"]
    channels = cnnviz.get_layer(loaded, middle).shape[0]
    picked = iter([c % channels for c in range(0, 7 * (repeats + 2), 7)])
    r["channel click (image seen: overlay, map, stats)"] = median_ms(
        lambda: page.channel(name, path, middle, next(picked), "random", 0.5), repeats)
    r["layer statistics (image seen: table, CSV)"] = median_ms(lambda: page.layer_stats(name, path, middle, "random"), repeats)
    r["filters view"] = median_ms(lambda: encoder.postprocess(ui.filters(name, "random")[0]), repeats)

    def architecture_first() -> None:
        loaded.derived.pop("summary.depth3", None)  # the summary kept on the model
        ui.architecture(name, "random", 3)

    r["architecture (first)"] = median_ms(architecture_first, max(3, repeats // 2))
    r["architecture (repeated)"] = median_ms(lambda: ui.architecture(name, "random", 3), repeats)

    module = loaded.model.get_submodule(first)
    store = {}

    def layer_fn(inp, module=module):
        handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("o", o.detach().clone()))
        try:
            with torch.no_grad():
                loaded.model(inp)
        finally:
            handle.remove()
        return store["o"]

    r["seed recipe (first layer, matplotlib 8×8)"] = median_ms(lambda: seed_recipe(loaded.model, layer_fn, x), max(3, repeats // 2))
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_round_trip(repeats: int, photos: Photos) -> dict[str, float]:
    """Handler time vs the same call through gradio_client against a launched app."""
    from gradio_client import Client, handle_file

    from cnnviz import ui

    demo = ui.build_demo()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        same = photos()
        r: dict[str, float] = {}
        calls = {
            "feature_maps": (lambda: ui.feature_maps("resnet18", same, "layer1", "random"),
                             lambda: client.predict(model="resnet18", image=handle_file(same), layer="layer1", weights="random", api_name="/feature_maps")),
            "filters": (lambda: ui.filters("resnet18", "random"),
                        lambda: client.predict(model="resnet18", weights="random", api_name="/filters")),
            "architecture": (lambda: ui.architecture("resnet18", "random", 3),
                             lambda: client.predict(model="resnet18", weights="random", api_name="/architecture")),
        }
        http = RawHttp(f"http://127.0.0.1:{port}")
        uploaded = http.upload(same)
        raw = {
            "feature_maps": lambda: http.call("feature_maps", ["resnet18", uploaded, "layer1", "random", "first", 64, "gray", "channel"]),
            "filters": lambda: http.call("filters", ["resnet18", "random", "layer"]),
            "architecture": lambda: http.call("architecture", ["resnet18", "random", 3]),
        }
        for endpoint, (direct, remote) in calls.items():
            r[f"{endpoint}: handler"] = median_ms(direct, repeats)
            r[f"{endpoint}: raw HTTP round trip (+ output download)"] = median_ms(raw[endpoint], repeats)
            r[f"{endpoint}: gradio_client round trip"] = median_ms(remote, repeats)
        return r
    finally:
        demo.close()


class RawHttp:
    """Gradio's HTTP protocol by hand (POST /gradio_api/call/<name>, then read its event stream), to
    separate the server's overhead from gradio_client's (which polls its message queue every 50 ms)."""

    def __init__(self, base: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, timeout=60)

    def upload(self, path: str) -> dict:
        with open(path, "rb") as f:
            (server_path,) = self.http.post("/gradio_api/upload", files={"files": f}).json()
        return {"path": server_path, "meta": {"_type": "gradio.FileData"}}

    def call(self, name: str, data: list) -> None:
        event = self.http.post(f"/gradio_api/call/{name}", json={"data": data}).json()["event_id"]
        payload = ""
        with self.http.stream("GET", f"/gradio_api/call/{name}/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: error"):
                    raise RuntimeError(f"{name} failed")
                if line.startswith("data:"):
                    payload = line
        if '"url"' in payload:  # fetch the output file as a browser would
            import json

            outputs = json.loads(payload[5:])
            for item in outputs:
                if isinstance(item, dict) and item.get("url"):
                    self.http.get(item["url"]).raise_for_status()


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def bench_startup() -> dict[str, float]:
    """`python app.py` until its first page is served, vs only importing its dependencies."""
    env = {**os.environ, "CNNVIZ_OFFLINE": "1"}
    code = "import torch, torchvision, timm, gradio, time; time.sleep(1.5)"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    import psutil

    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, rss_mb(proc.pid))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    imports_s = time.perf_counter() - start - 1.5
    port = free_port()
    start = time.perf_counter()
    app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        served_s = time.perf_counter() - start
        time.sleep(2)
        idle = rss_mb(app.pid)
    finally:
        app.terminate()
        app.wait(10)
    return {"imports only (s)": imports_s, "app first page (s)": served_s, "import footprint (MB)": peak, "app idle RSS (MB)": idle}


FILTERS_BUDGET_MS = 30.0  # issue 9: the any-layer filters view of ResNet-50's layer4.2.conv2


def bench_any_layer_filters(repeats: int, name: str = "resnet50", layer: str = "layer4.2.conv2") -> dict[str, float]:
    """The Filters tab's view of a deep convolution (512 filters of 512×3×3: grid of input-channel means,
    histogram of 2.4 M weights, per-filter norms): computed afresh (per-model cache emptied each time),
    switching back to it (cached), and as the page serves it (the same plus PNG encoding and the file)."""
    import cnnviz
    from cnnviz import explore, ui

    def afresh(fn):
        def run():
            cnnviz.load_model(name, "random").derived.pop("filters.cache", None)  # the filters kept on the model
            fn()
        return run

    view = lambda: explore.filter_grid(name, "random", "layer", layer)  # noqa: E731
    view()  # the model loaded and warm
    return {
        "view, computed": median_ms(afresh(view), repeats),
        "view, switching back (cached)": median_ms(view, repeats),
        "served (PNG written), computed": median_ms(afresh(lambda: ui.filters(name, "random", "layer", layer)), repeats),
    }


def table(title: str, rows: dict[str, float], floor: float | None = None, seed: float | None = None) -> str:
    head = f"\n**{title}**\n\n| measure | median | × forward |" + (" seed ÷ ours |" if seed else "") + "\n|---|---:|---:|" + ("---:|" if seed else "") + "\n"
    lines = []
    for key, value in rows.items():
        ratio = f"{value / floor:.2f}" if floor else ""
        extra = f" {seed / value:.0f}× |" if seed and key.startswith("request") else (" |" if seed else "")
        lines.append(f"| {key} | {value:.1f} | {ratio} |{extra}")
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", nargs="*", default=None, help="cpu and/or cuda (default: cpu, plus cuda when present)")
    parser.add_argument("--no-server", action="store_true", help="skip the gradio_client and start-up measurements")
    parser.add_argument("--filters-only", action="store_true", help="only the any-layer filters view against its budget")
    args = parser.parse_args()
    if args.filters_only:
        args.models, args.no_server = [], True
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, devices {devices}, repeats {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        photos = Photos(Path(tmp))
        for device in devices:
            for name in args.models:
                r = bench_model(name, device, args.repeats, photos)
                seed = r.pop("seed recipe (first layer, matplotlib 8×8)")
                print(table(f"{name} on {device} (ms)", r, r["forward"], seed))
                print(f"\nseed recipe for the same first-layer grid: {seed:.1f} ms")
        filters = bench_any_layer_filters(args.repeats)
        print("\n**Any-layer filters: resnet50 layer4.2.conv2, random weights, cpu (ms)**\n\n| measure | median | ÷ 30 ms budget |\n|---|---:|---:|")
        print("\n".join(f"| {key} | {ms:.1f} | {ms / FILTERS_BUDGET_MS:.2f} |" for key, ms in filters.items()))
        if not args.no_server:
            print(table("HTTP round trip, resnet18 on cpu (ms)", bench_round_trip(args.repeats, photos)))
            for key, value in bench_startup().items():
                print(f"- {key}: {value:.1f}")


if __name__ == "__main__":
    main()
