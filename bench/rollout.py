"""Transformer-native attribution budgets (issue 19), as ratios measured in one run: attention rollout
vs the model's forward pass (≤ 1.5×), gradient-weighted rollout vs a forward + backward pass (≤ 1.5×).
The baselines are the model as loaded (fused attention where timm uses it), batch 1, 224 px; the
backward pass is the class score's gradient back to the input. Random weights (offline); CPU unless
CNNVIZ_DEVICE says otherwise.

    python bench/rollout.py [--threads N] [model ...]   # default: timm/vit_tiny_patch16_224 timm/deit_small_patch16_224 vit_b_16
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import median_ms  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)
from cnnviz import preprocess  # noqa: E402
from cnnviz.loading import load_model  # noqa: E402
from cnnviz.rollout import attention_map  # noqa: E402

IMAGE = "examples/coffee.png"
MODELS = ("timm/vit_tiny_patch16_224", "timm/deit_small_patch16_224", "vit_b_16")


def paired(baseline, method, repeat: int = 9) -> tuple[float, float, float]:
    """(baseline seconds, method seconds, ratio): the two timed in alternation, ``repeat`` pairs after one
    warm-up each, the fastest of each kept — on a machine whose cores are shared, a neighbour's burst
    slows single runs by several times, and alternating lets both see the same machine. Also the median
    ratio of the pairs is printed, as a check on the fastest-of-each ratio."""
    for fn in (baseline, method):
        fn()  # warm-up
    base, ours, ratios = [], [], []
    for _ in range(repeat):
        b, o = median_ms(baseline, 1, 0) / 1e3, median_ms(method, 1, 0) / 1e3
        base.append(b)
        ours.append(o)
        ratios.append(o / b)
    ratios.sort()
    return min(base), min(ours), ratios[len(ratios) // 2]


def main(names: list[str]) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {load:.1f} "
          "(above the core count, other work shares the cores: the figures are noisy)")
    for name in names:
        loaded = load_model(name, "random")
        x = preprocess.model_input(loaded, IMAGE).x
        model = loaded.model

        def forward():
            with torch.no_grad():
                model(x)

        def forward_backward():
            with torch.enable_grad():
                inputs = x.clone().requires_grad_(True)
                scores = model(inputs)
                torch.autograd.grad(scores[0, int(scores[0].argmax())], inputs)

        t_forward, t_rollout, r_rollout = paired(forward, lambda: attention_map(loaded, x, "rollout"))
        t_both, t_chefer, r_chefer = paired(forward_backward, lambda: attention_map(loaded, x, "chefer"))
        print(f"{name}: forward {t_forward * 1e3:.1f} ms · rollout {t_rollout * 1e3:.1f} ms ({t_rollout / t_forward:.2f}× forward, "
              f"median of pairs {r_rollout:.2f}×) · forward + backward {t_both * 1e3:.1f} ms · gradient-weighted rollout "
              f"{t_chefer * 1e3:.1f} ms ({t_chefer / t_both:.2f}× forward + backward, median of pairs {r_chefer:.2f}×)")

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--threads"]:  # on cores shared with other work, one thread is steadier (no waits at each op's barrier)
        torch.set_num_threads(int(args[1]))
        args = args[2:]
    main(args or list(MODELS))
