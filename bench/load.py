"""Bounded load test and memory budgets on loopback, against a launched app.

    python bench/load.py                          # 16 clients × 4 requests over 3 models
    python bench/load.py --clients 48 --requests 2 --queue 8   # overload: expect clear "queue is full"
    python bench/load.py --memory                 # the three memory scenarios against their budgets
    python bench/load.py --hostile                # the public-link budgets: worst requests, tiny hostile
                                                  # files, abandoned heavy calls, deadlines

Starts `python app.py` on a free loopback port (offline, random weights), reports failed requests,
error messages, latency percentiles and the server's peak RSS, then stops the server. The memory
scenarios each start a fresh server and print its peak (or idle) RSS next to the budget. Not a test.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CNNVIZ_OFFLINE", "1")
from cnnviz.server import IDLE_TRIM_S  # noqa: E402

MODELS = ["resnet18", "timm/efficientnet_lite0", "mobilenet_v3_large"]
PHOTOS = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".png", ".jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the app did not start within 120 s")


def one_client(url: str, index: int, requests: int, results: list) -> None:
    client = Client(url, verbose=False)
    for r in range(requests):
        model = MODELS[(index + r) % len(MODELS)]
        photo = PHOTOS[(index + r) % len(PHOTOS)]
        start = time.perf_counter()
        try:
            client.predict(model=model, image=handle_file(str(photo)), layer="", weights="random", api_name="/feature_maps")
            results.append(("ok", time.perf_counter() - start, ""))
        except Exception as e:  # every failure is counted and its message reported
            results.append(("error", time.perf_counter() - start, str(e)[:160]))


class RssWatch:
    """Polls a process's RSS every 50 ms in a thread; ``peak`` and ``now`` in bytes."""

    def __init__(self, pid: int) -> None:
        self.process, self.samples, self._stop = psutil.Process(pid), [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    @property
    def peak(self) -> int:
        return max(self.samples)

    @property
    def now(self) -> int:
        return self.process.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def raw_maps(http, url: str, model: str, image_path: str, layer: str) -> None:
    """One /feature_maps call over plain HTTP (upload path already on the server); raises on an error."""
    import json

    body = {"data": [model, {"path": image_path, "meta": {"_type": "gradio.FileData"}}, layer, "random", "first", 16, "gray", "channel"]}
    event = http.post(f"{url}gradio_api/call/feature_maps", json=body).json()["event_id"]
    with http.stream("GET", f"{url}gradio_api/call/feature_maps/{event}") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("complete", "error"):
                if kind == "error":
                    raise RuntimeError(f"{model} {layer}: {json.loads(line[6:])}")
                return


def layer_names(model: str, count: int) -> list[str]:
    """``count`` layers spread over the model's list (first, …, last), from the library itself."""
    import cnnviz

    found = cnnviz.list_layers(cnnviz.load_model(model, "random"))
    step = max(1, (len(found) - 1) / max(1, count - 1))
    return [found[min(len(found) - 1, round(i * step))].name for i in range(count)]


def user(url: str, model: str, photos: list[Path], layers: list[str]) -> None:
    """A user exploring: each photo uploaded, then its maps at each layer in turn."""
    import httpx

    with httpx.Client(timeout=600) as http:
        for photo in photos:
            with photo.open("rb") as f:
                path = http.post(f"{url}gradio_api/upload", files={"files": (photo.name, f)}).json()[0]
            for layer in layers:
                raw_maps(http, url, model, path, layer)


def memory_scenarios() -> None:
    """Peak RSS of one user on torchvision efficientnet_b7 (3 photos × 5 layers), of two users at once
    on timm efficientnet_b8, and idle RSS after cycling through 10 models, each on a fresh server."""
    gb = 2**30
    env = {**os.environ, "CNNVIZ_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cycle = ["alexnet", "vgg16", "resnet50", "densenet121", "efficientnet_b3", "convnext_tiny",
             "timm/efficientnet_b2", "regnet_y_1_6gf", "mobilenet_v3_large", "timm/resnet50"]
    scenarios = [
        ("one user, efficientnet_b7 (600 px): 3 photos × 5 layers", 4 * gb, "peak",
         [lambda url: user(url, "efficientnet_b7", PHOTOS[:3], layer_names("efficientnet_b7", 5))]),
        ("two users at once, timm/efficientnet_b8 (672 px): 1 photo × 2 layers each", 6 * gb, "peak",
         [lambda url, i=i: user(url, "timm/efficientnet_b8", PHOTOS[i:i + 1], layer_names("timm/efficientnet_b8", 2)[::1 - 2 * i])
          for i in range(2)]),
        ("idle after cycling through 10 models (1 photo, 3 layers each)", 2 * gb, "idle",
         [lambda url: [user(url, m, PHOTOS[:1], layer_names(m, 3)) for m in cycle]]),
    ]
    print("| scenario | measured | budget | |\n|---|---:|---:|---|")
    for title, budget, kind, users in scenarios:
        port = free_port()
        proc = start_app(port, env)
        watch = RssWatch(proc.pid)
        try:
            start = time.perf_counter()
            with ThreadPoolExecutor(len(users)) as pool:
                for future in [pool.submit(u, f"http://127.0.0.1:{port}/") for u in users]:
                    future.result()
            time.sleep(IDLE_TRIM_S + 3 if kind == "idle" else 0)  # the server gives freed memory back once quiet
            figure = watch.now if kind == "idle" else watch.peak
            wall = time.perf_counter() - start
        finally:
            watch.stop()
            proc.terminate()
            proc.wait(30)
        verdict = "within" if figure <= budget else "OVER"
        print(f"| {title} | {kind} {figure / gb:.2f} GB (peak {watch.peak / gb:.2f}, {wall:.0f} s) | "
              f"{budget / gb:.0f} GB | {verdict} |", flush=True)


class RawCall:
    """One request over raw HTTP, as a script or a hostile client sends it: ``POST /gradio_api/call/<name>``,
    then (unless ``fetch`` is False) its result stream. ``outcome`` is "complete", "error" or "refused"."""

    def __init__(self, http, url: str, name: str, data: list) -> None:
        self.http, self.url, self.name, self.data = http, url, name, data
        self.outcome, self.message, self.seconds = None, "", None

    def send(self, fetch: bool = True) -> RawCall:
        import json

        start = time.perf_counter()
        response = self.http.post(f"{self.url}gradio_api/call/{self.name}", json={"data": self.data})
        if response.status_code != 200:
            self.outcome, self.message = "refused", response.text[:200]
        elif fetch:
            event = response.json()["event_id"]
            with self.http.stream("GET", f"{self.url}gradio_api/call/{self.name}/{event}") as stream:
                kind = None
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind in ("complete", "error"):
                        self.outcome = kind
                        payload = json.loads(line[6:])
                        self.message = (payload.get("error") or "") if isinstance(payload, dict) else ""
                        break
        self.seconds = time.perf_counter() - start
        return self


def upload(http, url: str, path: Path) -> dict:
    with path.open("rb") as f:
        server_path = http.post(f"{url}gradio_api/upload", files={"files": (path.name, f)}).json()[0]
    return {"path": server_path, "meta": {"_type": "gradio.FileData"}}


def hostile_file(folder: Path) -> Path:
    """ResNet-18 with a 1.5 M-class head, every tensor saved as a stride-0 view: ~40 KB on disk, 3 GB if
    copied out (the issue's file)."""
    import torch
    import torchvision

    state = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in torchvision.models.resnet18().state_dict().items()}
    state["fc.weight"] = torch.zeros(()).expand(1_500_000, 512)
    state["fc.bias"] = torch.zeros(()).expand(1_500_000)
    path = folder / "expanded.pt"
    torch.save(state, path)
    return path


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def hostile_scenarios() -> None:
    """The issue's budgets, each on a fresh server: the worst single requests (peak RSS over idle, ≤ 4 GB;
    each ends with an answer or a sentence within its deadline), a tiny hostile checkpoint (RSS growth ≤ 10×
    its size), and a cheap call's p95 with two abandoned heavy calls running (≤ 3× its quiet p95)."""
    import tempfile

    import httpx

    gb, mb = 2**30, 2**20
    deadline = float(os.environ.get("CNNVIZ_REQUEST_S", "120"))
    env = {**os.environ, "CNNVIZ_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "CNNVIZ_MAX_PER_CLIENT": "64"}
    photo = PHOTOS[0]
    worst = [
        ("Score-CAM, efficientnet_b7 features.8 (600 px, 2,560 channels)", "attribution",
         lambda img: ["efficientnet_b7", img, "scorecam", "", "features.8", "random", 0.5]),
        ("Score-CAM, efficientnet_b7 features.6 (600 px, 384 channels)", "attribution",
         lambda img: ["efficientnet_b7", img, "scorecam", "", "features.6", "random", 0.5]),
        ("Grad-CAM, timm/efficientnet_b8 (672 px)", "attribution",
         lambda img: ["timm/efficientnet_b8", img, "gradcam", "", "", "random", 0.5]),
        ("compare CAM view, efficientnet_b7 vs vit_l_16", "compare",
         lambda img: ["efficientnet_b7", "vit_l_16", img, "random", "random", "cam", None]),
        ("feature visualisation, efficientnet_b7 features.6, 2,048 steps", "channel_visualization",
         lambda img: ["efficientnet_b7", "features.6", 0, 2048, "random", 0]),
        ("feature visualisation, vit_l_16 encoder.layers.encoder_layer_12, 256 steps", "channel_visualization",
         lambda img: ["vit_l_16", "encoder.layers.encoder_layer_12", 0, 256, "random", 0]),
    ]
    print(f"Per-request deadline {deadline:g} s (CNNVIZ_REQUEST_S). Each line: a fresh server, one request.\n")
    print("| request | outcome | seconds | peak RSS over idle | budget |\n|---|---|---:|---:|---|")
    for title, name, args in worst:
        port = free_port()
        proc = start_app(port, env)
        try:
            url = f"http://127.0.0.1:{port}/"
            with httpx.Client(timeout=deadline + 600) as http:
                image = upload(http, url, photo)
                time.sleep(2)
                idle = psutil.Process(proc.pid).memory_info().rss
                watch = RssWatch(proc.pid)
                call = RawCall(http, url, name, args(image)).send()
                watch.stop()
            over = watch.peak - idle
            within = "within" if over <= 4 * gb and call.seconds <= deadline + 5 else "OVER"
            said = call.message[:260] if call.outcome != "complete" else "answer"
            print(f"| {title} | {call.outcome}: {said} | {call.seconds:.1f} | {over / gb:.2f} GB | 4 GB, {deadline:g} s: "
                  f"{within} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    port = free_port()
    proc = start_app(port, env)
    try:
        url = f"http://127.0.0.1:{port}/"
        with tempfile.TemporaryDirectory() as folder, httpx.Client(timeout=600) as http:
            path = hostile_file(Path(folder))
            size = path.stat().st_size
            checkpoint = upload(http, url, path)
            time.sleep(1)
            for attempt in ("first (imports and the architecture's first count included)", "again"):
                before = psutil.Process(proc.pid).memory_info().rss
                watch = RssWatch(proc.pid)
                call = RawCall(http, url, "load_checkpoint", ["resnet18", checkpoint, None]).send()
                watch.stop()
                grew = max(0, watch.peak - before)
                print(f"\nA {size / 1024:.0f} KB checkpoint (ResNet-18 with a head of 1.5 M classes, stride-0 tensors), "
                      f"{attempt}: {call.outcome} in {call.seconds * 1000:.0f} ms, peak RSS +{grew / mb:.1f} MB "
                      f"({grew / size:.1f}× its size; budget 10×): {call.message[:200]}", flush=True)

            image = upload(http, url, photo)
            cheap = ["resnet18", image, "layer2", "random", "first", 16, "gray", "channel"]
            RawCall(http, url, "feature_maps", cheap).send()  # the model loaded, the photo kept
            quiet = [RawCall(http, url, "feature_maps", cheap).send().seconds for _ in range(20)]
            for args in (["resnet18", image, "scorecam", "", "layer3", "random", 0.5],
                         ["resnet18", image, "scorecam", "", "layer2", "random", 0.5]):
                RawCall(http, url, "attribution", args).send(fetch=False)  # abandoned: nobody reads them
            busy = [RawCall(http, url, "feature_maps", cheap).send().seconds for _ in range(20)]
            print(f"Cheap call (/feature_maps resnet18 layer2), 20 each: quiet p95 {p95(quiet) * 1000:.0f} ms, with two "
                  f"abandoned Score-CAMs on the same model p95 {p95(busy) * 1000:.0f} ms: {p95(busy) / p95(quiet):.2f}× "
                  "(budget 3×)", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--queue", type=int, default=None, help="CNNVIZ_QUEUE_SIZE for the server")
    parser.add_argument("--memory", action="store_true", help="run the memory scenarios instead")
    parser.add_argument("--hostile", action="store_true", help="run the public-link budget scenarios instead")
    args = parser.parse_args()
    if args.memory:
        return memory_scenarios()
    if args.hostile:
        return hostile_scenarios()
    env = {**os.environ, "CNNVIZ_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "CNNVIZ_MAX_PER_CLIENT": str(args.clients * 2)}  # every client here shares one address
    if args.queue:
        env["CNNVIZ_QUEUE_SIZE"] = str(args.queue)
    port = free_port()
    proc = start_app(port, env)
    watch = RssWatch(proc.pid)
    results: list = []
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            for i in range(args.clients):
                pool.submit(one_client, f"http://127.0.0.1:{port}/", i, args.requests, results)
        wall = time.perf_counter() - start
        alive = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
    finally:
        watch.stop()
        proc.terminate()
        proc.wait(10)
    ok = [t for status, t, _ in results if status == "ok"]
    errors = Counter(msg for status, _, msg in results if status == "error")
    print(f"{args.clients} clients × {args.requests} requests over {len(MODELS)} models in {wall:.1f} s")
    print(f"ok {len(ok)}, failed {sum(errors.values())}; server still serving: {alive}")
    if ok:
        q = statistics.quantiles(ok, n=20)
        print(f"latency s: median {statistics.median(ok):.2f}, p95 {q[-1]:.2f}, max {max(ok):.2f}")
    print(f"server RSS MB: start {watch.samples[0] / 2**20:.0f}, peak {watch.peak / 2**20:.0f}")
    for message, count in errors.most_common(5):
        print(f"  {count}× {message}")


if __name__ == "__main__":
    main()
