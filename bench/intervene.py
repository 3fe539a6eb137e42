"""Channel importance's budget (issue 19), measured in one run: every channel of a layer zeroed one at a
time, batched, against its floor, ⌈C / batch⌉ batched forward passes of the rest of the network.

What is timed, ResNet-18 (random weights), the coffee photo at 224 px, CPU, no gradients:

* **importance**: :func:`cnnviz.intervene.channel_importance` as a request runs it (after one warm-up run,
  which also made the one-off check of the fast path): one pass as is, then one pass per batch;
* **rest of the network, batch B**: the network with a hook at the layer that hands on B unchanged
  copies of its output (the same trick, no change), minus the network up to the layer (a pass stopped
  there by a hook): the floor is ⌈C / B⌉ of those;
* for comparison, **whole copies**: ⌈C / B⌉ passes of the whole network on B copies of the photo (what
  running B ablations without the trick costs).

Each is timed on the wall clock and on this process's CPU clock (the machine may be shared: CPU seconds
are what the work costs whatever the neighbours do), in interleaved rounds; the median round is printed.

    python bench/intervene.py
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnviz import budget, preprocess  # noqa: E402
from cnnviz.intervene import channel_importance  # noqa: E402
from cnnviz.layers import get_layer  # noqa: E402
from cnnviz.loading import load_model  # noqa: E402

IMAGE = "examples/coffee.png"
LAYERS = ("layer4.0.conv1", "layer3.0.conv1")
ROUNDS = 5
# One thread by default: on a shared machine, a thread pool's spin-waits turn neighbours' bursts into CPU
# seconds of ours; one thread's CPU seconds are its work. CNNVIZ_BENCH_THREADS=2 for the Space's two vCPUs.
THREADS = int(os.environ.get("CNNVIZ_BENCH_THREADS", "1"))


class _Stop(Exception):
    pass


def main() -> None:
    torch.set_num_threads(THREADS)
    loaded = load_model("resnet18", "random")
    model = loaded.model
    x = preprocess.model_input(loaded, IMAGE).x
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {loaded.device}")
    for name in LAYERS:
        info = get_layer(loaded, name)
        module = model.get_submodule(name)
        batch = budget.importance_batch(loaded, info)
        passes = math.ceil(info.shape[0] / batch)

        def with_hook(hook, inputs=x):
            handle = module.register_forward_hook(hook)
            try:
                with torch.no_grad():
                    model(inputs)
            except _Stop:
                pass
            finally:
                handle.remove()

        def prefix():
            with_hook(lambda _m, _i, _o: (_ for _ in ()).throw(_Stop()))

        def prefix_and_rest():
            with_hook(lambda _m, _i, out: out.expand(batch, *out.shape[1:]).clone())

        def whole_copies():
            with torch.no_grad():
                model(x.expand(batch, *x.shape[1:]))

        def importance():
            channel_importance(loaded, x, info, batch=batch)

        # Interleaved rounds, each a ratio of its own: the machine may be shared, and a neighbour's burst then
        # lands on both sides of a round rather than on one side of the comparison. Each is timed twice: wall
        # seconds, and this process's CPU seconds (what the work itself costs, whatever the neighbours do).
        importance()  # warm-up: the one-off check of the fast path for this layer
        for clock, label in ((time.perf_counter, "wall"), (time.process_time, "CPU")):
            rounds = []
            for _ in range(ROUNDS):
                t_prefix = timed(prefix, clock, 3)
                t_pass = timed(prefix_and_rest, clock, 3)
                t_importance = timed(importance, clock, 1)
                t_whole = timed(whole_copies, clock, 1)
                floor = passes * (t_pass - t_prefix)
                rounds.append((t_importance / floor, t_importance, floor, t_pass, t_prefix, passes * t_whole))
            ratio, t_importance, floor, t_pass, t_prefix, t_whole = sorted(rounds)[len(rounds) // 2]  # the median round
            print(f"resnet18 {name} ({info.shape[0]} channels, {info.shape[1]}×{info.shape[2]}), batch {batch}, {passes} passes, "
                  f"{label} time: importance {t_importance:.2f} s · floor {floor:.2f} s ({passes} × rest of the network at batch "
                  f"{batch}: {(t_pass - t_prefix) * 1e3:.0f} ms = {t_pass * 1e3:.0f} ms hooked pass − {t_prefix * 1e3:.0f} ms up to "
                  f"the layer) · ratio {ratio:.2f}× (budget ≤ 1.5×; rounds: {', '.join(f'{r[0]:.2f}' for r in rounds)}) · "
                  f"whole copies instead: {t_whole:.2f} s ({t_whole / floor:.2f}× the floor)")


def timed(fn, clock, repeats: int) -> float:
    """Median seconds of ``fn`` on ``clock`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)

if __name__ == "__main__":
    main()
