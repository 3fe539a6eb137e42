"""Bounded load test on loopback: many gradio_client clients at once against a launched app.

    python bench/load.py                          # 16 clients × 4 requests over 3 models
    python bench/load.py --clients 48 --requests 2 --queue 8   # overload: expect clear "queue is full"

Starts `python app.py` on a free loopback port (offline, random weights), reports failed requests,
error messages, latency percentiles and the server's peak RSS, then stops the server. Not a test.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--queue", type=int, default=None, help="CNNVIZ_QUEUE_SIZE for the server")
    args = parser.parse_args()
    env = {**os.environ, "CNNVIZ_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    if args.queue:
        env["CNNVIZ_QUEUE_SIZE"] = str(args.queue)
    port = free_port()
    proc = start_app(port, env)
    server = psutil.Process(proc.pid)
    peak, stop = [server.memory_info().rss], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak.append(server.memory_info().rss)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results: list = []
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            for i in range(args.clients):
                pool.submit(one_client, f"http://127.0.0.1:{port}/", i, args.requests, results)
        wall = time.perf_counter() - start
        alive = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
    finally:
        stop.set()
        watcher.join()
        proc.terminate()
        proc.wait(10)
    ok = [t for status, t, _ in results if status == "ok"]
    errors = Counter(msg for status, _, msg in results if status == "error")
    print(f"{args.clients} clients × {args.requests} requests over {len(MODELS)} models in {wall:.1f} s")
    print(f"ok {len(ok)}, failed {sum(errors.values())}; server still serving: {alive}")
    if ok:
        q = statistics.quantiles(ok, n=20)
        print(f"latency s: median {statistics.median(ok):.2f}, p95 {q[-1]:.2f}, max {max(ok):.2f}")
    print(f"server RSS MB: start {peak[0] / 2**20:.0f}, peak {max(peak) / 2**20:.0f}")
    for message, count in errors.most_common(5):
        print(f"  {count}× {message}")


if __name__ == "__main__":
    main()
