"""Loading a user's checkpoint (cnnviz.load_checkpoint) vs reading the same file with safetensors, in one run.

    python bench/checkpoint.py                      # torchvision resnet18: a 46.8 MB safetensors file
    python bench/checkpoint.py --model timm/resnet26d --repeats 9

The checkpoint is the model's own state dict with random weights, saved to a temporary .safetensors file
(resnet18's is 46.8 MB; timm/resnet26d's 64 MB). Measured, each as a median over --repeats runs after a
warm-up (the file is in the page cache, as an upload just written is):

- ``safetensors.torch.load_file``: what the library does alone. Its tensors map the file and are read
  lazily, so this reads almost nothing; "+ materialise" copies each tensor into memory, which any model
  that uses the weights must do once.
- ``load_checkpoint``, cold (the model cache and upload names cleared before each run): check the file
  (suffix, size limit, first bytes), digest it in 1 MB chunks for the name (seeded XXH3-128, then HMAC-SHA256), parse it (load_file and a
  copy of each tensor, so the model owns its memory), build the architecture with its parameters on the
  meta device (no random initialisation), assign the tensors, wrap the model with its transform and labels.
- the same steps one by one, and the obvious way: build the model with its random initialisation, then
  ``load_state_dict`` (copies into initialised parameters).
- ``load_checkpoint`` again with the model cached (the same file uploaded twice): the name only.

Prints markdown; nothing here is a test and nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CNNVIZ_OFFLINE", "1")
os.environ.setdefault("CNNVIZ_DEVICE", "cpu")

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

from bench import median_ms  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)
from cnnviz import checkpoint, registry  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="any registry name (default: torchvision resnet18)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = registry.get_spec(args.model)
    state = registry.load_model(spec.key, "random").model.state_dict()
    registry.clear_cache()
    folder = tempfile.mkdtemp(prefix="cnnviz-bench-")
    path = os.path.join(folder, "checkpoint.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    size_mb = os.path.getsize(path) / 1e6
    repeats = args.repeats

    def materialised() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in safetensors.torch.load_file(path).items()}

    kept: list = []  # models from earlier runs stay alive: freeing one is not part of loading the next
    names: list[str] = []

    def cold() -> None:
        if names:
            kept.append(registry.load_model(names[-1]))
        registry.clear_cache()
        registry.clear_uploads()
        names.append(registry.load_checkpoint(spec.key, path).name)

    file = checkpoint.open_checkpoint(path)
    parsed, _ = checkpoint.read_state_dict(file)

    def obvious() -> None:
        model = registry._construct(spec)  # the library's builder with its random initialisation
        model.load_state_dict(materialised(), strict=True)

    def skeleton() -> torch.nn.Module:
        return registry._architecture(spec, None, False, skeleton=True)

    rows = [
        ("safetensors.torch.load_file (lazy: maps the file)", median_ms(lambda: safetensors.torch.load_file(path), repeats)),
        ("load_file + materialise (clone every tensor)", median_ms(materialised, repeats)),
        ("**load_checkpoint, cold**", median_ms(cold, repeats)),
        ("· check the file (suffix, size, first bytes)", median_ms(lambda: checkpoint.open_checkpoint(path), repeats)),
        ("· the name: seeded XXH3-128 of the file in 1 MB chunks, HMAC-SHA256 over it", median_ms(lambda: checkpoint.file_name(file, spec.key), repeats)),
        ("· parse: load_file + a copy of each tensor (read_state_dict)", median_ms(lambda: checkpoint.read_state_dict(file), repeats)),
        ("· build the architecture, parameters on meta", median_ms(skeleton, repeats)),
        ("· build on meta + assign the tensors", median_ms(lambda: checkpoint.load_weights(skeleton(), parsed), repeats)),
        ("the obvious way: build with random init + load_state_dict", median_ms(obvious, repeats)),
        ("load_checkpoint again, model cached (the name only)", median_ms(lambda: registry.load_checkpoint(spec.key, path), repeats)),
    ]
    lazy, eager, ours = rows[0][1], rows[1][1], rows[2][1]
    print(f"## Loading a {size_mb:.1f} MB safetensors checkpoint of {spec.key} "
          f"({len(state)} tensors; {torch.get_num_threads()} torch threads, median of {repeats})\n")
    print("| step | ms |\n|---|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms:.1f} |")
    floor = rows[4][1] + eager  # what any load that names the upload by its bytes must do at least
    print(f"\nload_checkpoint / load_file: {ours / lazy:.1f}× (lazy), {ours / eager:.2f}× (materialised); "
          f"load_checkpoint / (name + materialised load_file): {ours / floor:.2f}×; "
          f"the obvious way / load_checkpoint: {rows[8][1] / ours:.2f}×")
    os.remove(path)
    os.rmdir(folder)


if __name__ == "__main__":
    main()
