"""The browser's path for a new photo, against a bare forward pass measured in the same run.

    python bench/path.py                               # alexnet, resnet18, resnet50; 9 rounds
    python bench/path.py --models resnet50 --rounds 15

What a page pays for a new photo on Feature maps, over raw HTTP with one reused ``httpx`` client against a
real ``python app.py`` started here (offline, random weights): ``POST /gradio_api/upload`` of a photo no
cache has seen (its centre pixels changed each call), ``POST /gradio_api/call/feature_maps``, its event
stream ``GET /gradio_api/call/feature_maps/<id>``, and the ``GET`` of the grid file it names. Beside it,
in this process: the bare forward pass ``model(x)`` of the same model, and the library's own
``cnnviz.explore.feature_maps`` on a new photo. The three are measured in turns, round by round, so
a busy machine slows all of them alike; the ratios within one run are what count (issue 17 §5's
budgets: round trip ≤ 1.5 × forward + 50 ms, library call ≤ 1.3 × forward).

The page's calls carry its session (``session_hash``), as the browser's do; a second round trip per round
goes without one, as a script's ``/call`` does (Gradio then builds a new session's state first). The
server's CPU time per round trip (every thread, from ``psutil``) and its system part (page faults) are
printed too: steadier than wall time on a shared machine. ``--server-env MALLOC_MMAP_THRESHOLD_=131072``
runs the server with the allocator setting app.py used before issue 17, for a same-run comparison.

Prints medians, min–max ranges and ratios per model (markdown); nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("CNNVIZ_OFFLINE", "1")

from load import free_port, start_app  # noqa: E402  (bench/load.py)

from bench import Photos  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)

MODELS = ["alexnet", "resnet18", "resnet50"]
STAGES = ("upload", "call", "events", "grid")


class BrowserPath:
    """One new photo through ``/feature_maps`` as the page sends it; :meth:`__call__` returns the
    milliseconds of each stage (``STAGES``)."""

    def __init__(self, base: str, session: str | None = None) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, timeout=120)
        # A page sends its session with every call; a call without one is a new session each time, and Gradio
        # builds a session's state (a config for each of the app's ~200 blocks) before it runs the function.
        self.session = session

    def __call__(self, model: str, photo: str, layer: str = "") -> dict[str, float]:
        times, t0 = {}, time.perf_counter()
        with open(photo, "rb") as f:
            response = self.http.post("/gradio_api/upload", files={"files": (Path(photo).name, f, "image/png")})
        response.raise_for_status()
        (path,) = response.json()
        t1 = time.perf_counter()
        data = [model, {"path": path, "meta": {"_type": "gradio.FileData"}}, layer, "random", "first", 64, "auto", "channel"]
        body = {"data": data, **({"session_hash": self.session} if self.session else {})}
        event = self.http.post("/gradio_api/call/feature_maps", json=body).json()["event_id"]
        t2 = time.perf_counter()
        kind, payload = None, None
        with self.http.stream("GET", f"/gradio_api/call/feature_maps/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind in ("complete", "error"):
                    payload = json.loads(line[6:])
                    break
        if kind != "complete":
            raise RuntimeError(f"/feature_maps {model}: {kind} {payload}")
        t3 = time.perf_counter()
        self.http.get(payload[0]["url"]).raise_for_status()  # the grid, as the page's <img> fetches it
        t4 = time.perf_counter()
        for stage, (a, b) in zip(STAGES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
            times[stage] = (b - a) * 1000
        times["round trip"] = (t4 - t0) * 1000
        return times


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def bench_model(name: str, rounds: int, path: BrowserPath, script: BrowserPath, photos: Photos, server) -> dict[str, list[float]]:
    import cnnviz
    from cnnviz import activations, explore, preprocess

    loaded = cnnviz.load_model(name, "random", "cpu")
    x = preprocess.to_input(loaded, preprocess.open_image(photos()))
    for _ in range(2):  # warm: the model built on both sides, first-call costs paid
        activations.run(loaded.model, x)
        explore.feature_maps(name, photos(), None, "random")
        path(name, photos())
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        out.setdefault("forward", []).append(statistics.median(timed(lambda: activations.run(loaded.model, x)) for _ in range(3)))
        cpu = time.process_time()
        activations.run(loaded.model, x)
        out.setdefault("forward, CPU time", []).append((time.process_time() - cpu) * 1000)
        fresh, cpu = photos(), time.process_time()  # written before timing starts
        out.setdefault("library feature_maps (new photo)", []).append(
            timed(lambda: explore.feature_maps(name, fresh, None, "random")))
        out.setdefault("library feature_maps, CPU time", []).append((time.process_time() - cpu) * 1000)
        fresh, before = photos(), server.cpu_times()
        for stage, ms in path(name, fresh).items():
            out.setdefault(f"HTTP {stage}" if stage != "round trip" else "HTTP round trip (new photo)", []).append(ms)
        after = server.cpu_times()  # the server's own CPU time (every thread), steadier than wall time on a busy machine
        out.setdefault("server CPU time for the round trip", []).append(
            (after.user + after.system - before.user - before.system) * 1000)
        out.setdefault("  of which system time (page faults, I/O)", []).append((after.system - before.system) * 1000)
        out.setdefault("HTTP round trip without a session (a script's call)", []).append(script(name, photos())["round trip"])
    return out


def report(name: str, out: dict[str, list[float]]) -> str:
    forward = statistics.median(out["forward"])
    lines = [f"\n**{name} on cpu (ms; median, min–max over {len(out['forward'])} rounds)**\n",
             "| measure | median | range | × forward |", "|---|---:|---:|---:|"]
    for key, values in out.items():
        m = statistics.median(values)
        lines.append(f"| {key} | {m:.1f} | {min(values):.0f}–{max(values):.0f} | {m / forward:.2f} |")
    trip, library = statistics.median(out["HTTP round trip (new photo)"]), statistics.median(out["library feature_maps (new photo)"])
    # the same ratio per round (forward and round trip measured side by side): its range says how steady it is
    per_round = [t / f for t, f in zip(out["HTTP round trip (new photo)"], out["forward"])]
    cpu = statistics.median(out["forward, CPU time"])
    lines.append(f"\nCPU time ÷ forward's CPU time (steadier on a busy machine): server round trip "
                 f"{statistics.median(out['server CPU time for the round trip']) / cpu:.2f}, library call "
                 f"{statistics.median(out['library feature_maps, CPU time']) / cpu:.2f}")
    lines.append(f"\nround trip budget 1.5 × forward + 50 ms = {1.5 * forward + 50:.0f} ms: "
                 f"{'within' if trip <= 1.5 * forward + 50 else 'OVER'} ({trip:.0f} ms; per-round ratio "
                 f"{min(per_round):.2f}–{max(per_round):.2f}); library budget 1.3 × forward = {1.3 * forward:.0f} ms: "
                 f"{'within' if library <= 1.3 * forward else 'OVER'} ({library:.0f} ms)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="environment for the server, e.g. MALLOC_MMAP_THRESHOLD_=131072 (the allocator before issue 17)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads here and in the server (OMP_NUM_THREADS); default: torch's own choice")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server inherits it
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads here, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, server environment {args.server_env or 'as app.py sets it'}")
    port = free_port()
    proc = start_app(port, {**os.environ, "CNNVIZ_DEVICE": "cpu", **dict(e.split("=", 1) for e in args.server_env)})
    try:
        import psutil

        base = f"http://127.0.0.1:{port}"
        path, script = BrowserPath(base, session="bench-page"), BrowserPath(base)
        with tempfile.TemporaryDirectory() as tmp:
            photos = Photos(Path(tmp))
            for name in args.models:
                print(report(name, bench_model(name, args.rounds, path, script, photos, psutil.Process(proc.pid))), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
