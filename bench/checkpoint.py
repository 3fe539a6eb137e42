"""Loading a user's checkpoint (cnnviz.load_checkpoint) vs reading the same file with safetensors, in one run;
and refusing the hostile checkpoints of the public-link issue.

    python bench/checkpoint.py                      # torchvision resnet18: a 46.8 MB safetensors file
    python bench/checkpoint.py --model timm/resnet26d --repeats 9
    python bench/checkpoint.py --hostile            # only the refusals

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

Refusals: each hostile file (made here, as the issue describes them) is refused --repeats times; the table
gives its size, the median time to the refusal, and how far the process's resident memory rose above its level
before, at its peak (Linux: the peak, VmHWM, is reset through /proc/self/clear_refs before each; elsewhere the
level after), beside what the same file cost before these limits (the issue's measurements).

Prints markdown; nothing here is a test and nothing asserts a time.
"""
from __future__ import annotations

import argparse
import functools
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
import torchvision  # noqa: E402

from bench import median_ms  # noqa: E402  (bench/bench.py: this script's folder is on sys.path)
from cnnviz import checkpoint, loading, registry  # noqa: E402
from cnnviz.errors import CnnvizError  # noqa: E402
from tests.fixtures.memory import peak_growth  # noqa: E402  (the measure the tests use)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="any registry name (default: torchvision resnet18)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--hostile", action="store_true", help="only the refusals of hostile checkpoints")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.hostile:
        load_times(args.model, args.repeats)
    refusals(args.repeats)


def load_times(model: str, repeats: int) -> None:
    """The load of an ordinary checkpoint, step by step."""
    spec = registry.get_spec(model)
    state = loading.load_model(spec.key, "random").model.state_dict()
    loading.clear_cache()
    folder = tempfile.mkdtemp(prefix="cnnviz-bench-")
    path = os.path.join(folder, "checkpoint.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    size_mb = os.path.getsize(path) / 1e6

    def materialised() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in safetensors.torch.load_file(path).items()}

    kept: list = []  # models from earlier runs stay alive: freeing one is not part of loading the next
    names: list[str] = []

    def cold() -> None:
        if names:
            kept.append(loading.load_model(names[-1]))
        loading.clear_cache()
        loading.clear_uploads()
        names.append(loading.load_checkpoint(spec.key, path).name)

    file = checkpoint.open_checkpoint(path)
    parsed, _ = checkpoint.read_state_dict(file)

    def obvious() -> None:
        model = loading._construct(spec)  # the library's builder with its random initialisation
        model.load_state_dict(materialised(), strict=True)

    def skeleton() -> torch.nn.Module:
        return loading._architecture(spec, None, False, skeleton=True)

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
        ("load_checkpoint again, model cached (the name only)", median_ms(lambda: loading.load_checkpoint(spec.key, path), repeats)),
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


# --------------------------------------------------------------------------------------------------
# Refusing hostile checkpoints
# --------------------------------------------------------------------------------------------------


def _expanded(build, **changes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A model's state dict as views of one zero (stride 0: 4 bytes on disk each), some shapes changed."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build().state_dict().items()}
    shapes.update({k.replace("__", "."): v for k, v in changes.items()})
    return {k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}


def _million_empty(path: str) -> None:
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(1_000_000))
    header = ("{" + entries + "}").encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)


def _diverged(path: str) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["fc.bias"][0] = float("nan")
    safetensors.torch.save_file(state, path)


def _hostile(folder: str) -> list[tuple[str, str, str, str]]:
    """(what, architecture, path, before these limits) for each hostile file, written to ``folder``."""
    one = torch.zeros(0)
    files = [
        ("1.5 M classes, expand() views", "resnet18", "classes.pt", "loaded: 780.7 M parameters, +2.85 GB",
         lambda p: torch.save(_expanded(torchvision.models.resnet18, fc__weight=(1_500_000, 512), fc__bias=(1_500_000,)), p)),
        ("vit_h_14 as expand() views", "vit_h_14", "vit.pt", "loaded: 633.5 M parameters",
         lambda p: torch.save(_expanded(torchvision.models.vit_h_14), p)),
        ("2^31 classes (4 TB at full size)", "resnet18", "4tb.pt", "raw alloc_cpu.cpp message",
         lambda p: torch.save(_expanded(torchvision.models.resnet18, fc__weight=(2**31, 512), fc__bias=(2**31,)), p)),
        ("1,000,000 empty tensors (safetensors)", "resnet18", "million.safetensors", "67-229 s, +1.2-1.6 GB kept",
         _million_empty),
        ("300,000 tensors (torch zip)", "resnet18", "many.pt", "-",
         lambda p: torch.save({f"t{i}": one for i in range(300_000)}, p)),
        ("300,000 tensors (legacy torch)", "resnet18", "many-legacy.pt", "-",
         lambda p: torch.save({f"t{i}": one for i in range(300_000)}, p, _use_new_zipfile_serialization=False)),
        ("NaN in fc.bias", "resnet18", "diverged.safetensors", "loaded; /filters ValueError", _diverged),
        ("TorchScript archive", "resnet18", "program.pt", "called damaged",
         lambda p: torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), p)),
    ]
    made = []
    for what, model, name, before, write in files:
        path = os.path.join(folder, name)
        write(path)
        made.append((what, model, path, before))
    return made


def _refusal(model: str, path: str) -> str:
    """The sentence load_checkpoint refuses ``path`` with ("LOADED" if it does not), the model cache cleared first."""
    loading.clear_cache()
    try:
        loading.load_checkpoint(model, path)
    except CnnvizError as e:
        return str(e)
    return "LOADED"


def refusals(repeats: int) -> None:
    """The table of hostile files refused: size, median time, peak resident growth, the sentence's start."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notices
    folder = tempfile.mkdtemp(prefix="cnnviz-hostile-")
    ordinary = os.path.join(folder, "ordinary.safetensors")
    safetensors.torch.save_file(torchvision.models.resnet18().state_dict(), ordinary)
    loading.load_checkpoint("resnet18", ordinary)  # imports and first builds are not part of a refusal
    print(f"\n## Refusing hostile checkpoints (median of {repeats}; peak resident growth per refusal)\n")
    print("| file | size | refused in ms | peak RSS growth | before | refused with |\n|---|---:|---:|---:|---|---|")
    for what, model, path, before in _hostile(folder):
        refuse = functools.partial(_refusal, model, path)
        growth = max(peak_growth(refuse)[1] for _ in range(3))
        ms = median_ms(refuse, repeats)
        size = os.path.getsize(path)
        print(f"| {what} | {size / 1e3:,.0f} KB | {ms:.1f} | {growth / 2**20:.1f} MB | {before} | {refuse()[:90]}… |")
        os.remove(path)
    loading.clear_cache()
    loading.clear_uploads()
    os.remove(ordinary)
    os.rmdir(folder)


if __name__ == "__main__":
    main()
