"""The Ray engine: the dataset pass on Ray Data, on this machine or across a Ray cluster.

The pipeline streams: ``from_items`` (ids and paths only) → decode and transform in parallel tasks (pixels as
numpy tensors in the blocks; a file that cannot be read becomes a row with its reason, never an exception)
→ the model in a pool of actors (one per GPU, or per two CPUs), each reducing its batch with
:func:`~.engine.reduce_batch` → the driver, which regroups the rows into :class:`~.engine.Batch` es (one per actor task: a batch or
two). Ray Data's backpressure keeps a few blocks in flight, so memory does not grow with the collection.
Decoding goes through :func:`~.engine.try_decode` and the model through :func:`~.engine.reduce_batch`, as in
the local engine: the two give the same reductions, to the last bit wherever a layer's arithmetic for one
image does not depend on the others in its batch (convolutions on the CPU do not; a ``Linear`` layer's
matrix product may differ in the last bits between batch compositions).

Connection (:func:`connect`): an ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; a Ray this
process already runs is reused; otherwise a local Ray starts, sized by ``CNNVIZ_RAY_CPUS`` (or the machine)
with a modest object store (``CNNVIZ_RAY_STORE_MB``, 256 MB). A local Ray this module started stays up
after a pass: an app server runs many passes and a Ray start costs seconds (4 to 9 on two cores), while an
idle local Ray costs a few hundred MB; :func:`shutdown` ends it on demand, and Ray's own exit hook when the
process ends. A Ray this module did not start is never shut down here. Each pass still starts its own
model actors (a process that imports torch and receives the model: about 5 s on two cores).

Ray is an optional extra (``pip install 'cnnviz[ray]'``): it is imported only when a pass or a connection
asks for it. The workers of a remote cluster import this module, so they need cnnviz (and torch) installed.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import CnnvizError
from ..layers import LayerInfo
from .accumulate import Reduced
from .engine import Batch, EngineJob, reduce_batch, try_decode

STORE_BYTES = 256 * 2**20  # the local Ray's object store: a few decoded batches (32 × 224 px = 19 MB each)
CPUS_VARIABLE = "CNNVIZ_RAY_CPUS"
STORE_VARIABLE = "CNNVIZ_RAY_STORE_MB"
# A decode task's CPU share. Not 1, the model actors' share: Ray Data fuses a task stage into the actor stage
# after it when their resources match, and each actor would then decode its batches itself, one after the
# other with its passes, instead of tasks decoding the next batches meanwhile. Decoding waits on the disk too.
DECODE_CPUS = 0.5
FIELDS = ("value", "y", "x", "mean", "rectified", "positive")  # Reduced's per-image arrays, each a column per layer

_started = False  # this module started the process's Ray: only then may shutdown() end it


def _ray():
    """The ``ray`` module with Ray Data, imported on first use: ``import cnnviz`` must not need Ray."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine's pipeline)
    except ImportError as e:
        raise CnnvizError("The ray engine needs Ray: pip install 'cnnviz[ray]', or choose the local engine.") from e
    return ray


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise CnnvizError(f"{name} must be a whole number ≥ 1, not {value[:40]!r}.")
    return int(value)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; True when this call started a local Ray.

    In order: a Ray already initialised in this process is reused as it is (``address`` is then not
    consulted); ``address`` or else ``RAY_ADDRESS`` joins that cluster (its size is the cluster's);
    otherwise a local Ray starts with ``num_cpus`` (else ``CNNVIZ_RAY_CPUS``, else every core), no dashboard,
    a ``CNNVIZ_RAY_STORE_MB`` (256 MB) object store and the workers' logs kept out of this process's output.
    A ``"local"`` address always starts a fresh local Ray (never one that ``ray start`` left running).

    Raises:
        CnnvizError: Ray is not installed, or a variable is not a whole number.
    """
    global _started
    ray = _ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
        return False
    cpus = num_cpus or _env_int(CPUS_VARIABLE, os.cpu_count() or 1)
    store = _env_int(STORE_VARIABLE, STORE_BYTES // 2**20) * 2**20
    ray.init(address="local", num_cpus=cpus, object_store_memory=store, include_dashboard=False,
             log_to_driver=False, ignore_reinit_error=True)
    _started = True
    return True


def shutdown() -> bool:
    """End the local Ray that :func:`connect` started (True), and nothing else (False): a cluster joined, or a
    Ray someone else initialised in this process, is left running for whoever owns it."""
    global _started
    if not _started:
        return False
    import ray

    ray.shutdown()
    _started = False
    return True


# ----------------------------------------------------------------------------------------------
# What runs on the workers
# ----------------------------------------------------------------------------------------------
def _decode_rows(rows: dict[str, np.ndarray], transform) -> dict[str, np.ndarray]:
    """A Ray Data task: ``{"id", "path"}`` → ``{"id", "pixels", "reason"}``. ``pixels``: the model's input,
    float32[3,H,W] per row (an empty float32[0,0,0] where ``reason`` says why the file was skipped; "" when
    it was not). ``transform``: the object, or its ``ObjectRef``."""
    transform = _resolved(transform)
    pixels, reasons = [], []
    for path in rows["path"]:
        x, reason = try_decode(str(path), transform)
        pixels.append(np.zeros((0, 0, 0), np.float32) if x is None else np.ascontiguousarray(x.numpy()))
        reasons.append(reason or "")
    column = np.empty(len(pixels), dtype=object)  # one array per row: Ray stores them as a tensor column
    column[:] = pixels
    return {"id": np.asarray(rows["id"], np.int64), "pixels": column, "reason": np.asarray(reasons, dtype=object)}


def _resolved(value):
    """``value``, fetched from the object store when it is an ``ObjectRef`` (how the driver ships objects)."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


class _Reducer:
    """A Ray Data actor: holds the model (fetched once, on its own device) and reduces each batch of decoded
    rows. Skipped rows go around the model and keep their reason; their reductions are zeros."""

    def __init__(self, model, layers: Sequence[LayerInfo], device: str) -> None:
        self.model = _resolved(model).to(device)
        self.layers, self.device = list(layers), device

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reasons = np.asarray(rows["reason"], dtype=object)
        good = np.flatnonzero(reasons == "")
        out = {"id": np.asarray(rows["id"], np.int64), "reason": reasons}
        out.update(_zeros(self.layers, len(reasons)))
        if len(good):
            x = torch.from_numpy(np.stack([rows["pixels"][i] for i in good])).to(self.device)
            reduced = reduce_batch(self.model, self.layers, x)
            for index, layer in enumerate(self.layers):
                for name in FIELDS:
                    out[f"{index}.{name}"][good] = getattr(reduced[layer.name], name)
                out[f"{index}.positions"][good] = reduced[layer.name].positions
        return out


def _zeros(layers: Sequence[LayerInfo], rows: int) -> dict[str, np.ndarray]:
    """Every layer's output columns for ``rows`` rows, zero-filled (the channel count comes from the listing,
    so a batch of skipped files has the same columns as any other)."""
    dtypes = {"value": np.float32, "y": np.int32, "x": np.int32, "mean": np.float64, "rectified": np.float64, "positive": np.int64}
    out = {}
    for index, layer in enumerate(layers):
        out.update({f"{index}.{name}": np.zeros((rows, layer.shape[0]), dtype) for name, dtype in dtypes.items()})
        out[f"{index}.positions"] = np.zeros(rows, np.int64)
    return out


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------
def run_ray(job: EngineJob, address: str | None = None) -> Iterator[Batch]:
    """The Ray engine (see the module's docstring): :class:`Batch` es of ``job`` as the actors finish them, in
    no particular order. ``job.stop()`` is asked before each batch is handed on; when it says stop, the
    pipeline's execution is shut down (tasks cancelled, actors released) and the iteration ends. Closing
    the generator early does the same.

    Raises:
        CnnvizError: Ray is not installed, or ``job.device`` is a GPU and the cluster has none.
    """
    if not job.items:
        return
    ray = _ray()
    connect(address)
    batches = iter(_pipeline(ray, job).iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
    try:
        for rows in batches:
            if job.stop():
                return
            yield _batch(rows, job.layers)
    finally:
        batches.close()  # shuts the execution down now (not when the iterator is collected)


def _pipeline(ray, job: EngineJob):
    """The pass as a lazy Ray Data dataset of the actors' rows: nothing runs before it is iterated. The model
    and the transform are put in the object store once; each task and actor fetches them from there."""
    size = max(1, job.batch_size)
    items = [{"id": item.id, "path": item.path} for item in job.items]
    data = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / size))
    data.context.enable_progress_bars = False  # this dataset's own context: the caller reports progress, not Ray
    data.context.print_on_execution_start = False
    decoded = data.map_batches(_decode_rows, fn_kwargs={"transform": ray.put(job.transform)}, batch_size=size,
                               batch_format="numpy", concurrency=job.workers or None, num_cpus=DECODE_CPUS)
    actor = {"model": ray.put(_on_cpu(job.model)), "layers": list(job.layers), "device": _actor_device(job.device)}
    return decoded.map_batches(_Reducer, fn_constructor_kwargs=actor, batch_size=size, batch_format="numpy",
                               zero_copy_batch=True, **_pool(ray, job.device))


def _on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """What is shipped to the actors: the model itself when it is on the CPU, else a CPU copy (a pickled CUDA
    tensor would only load on a worker with that GPU); the actors move it to their own device."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).to("cpu")


def _actor_device(device: str) -> str:
    """An actor's device: "cuda" for any CUDA device (Ray gives each actor its GPU as the only visible one)."""
    return "cuda" if str(device).startswith("cuda") else str(device)


def _pool(ray, device: str) -> dict:
    """The model actors' resources: one GPU each, as many as the cluster has GPUs; on CPUs, one CPU each and
    up to half the cluster's CPUs (the other half decodes)."""
    resources = ray.cluster_resources()
    if str(device).startswith("cuda"):
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise CnnvizError(f"The model runs on {device}, but the Ray cluster has no GPU. Run it on the CPU, or join a cluster with GPUs.")
        return {"concurrency": (1, gpus), "num_gpus": 1}
    cpus = int(resources.get("CPU", 1))
    return {"concurrency": (1, max(1, cpus // 2)), "num_cpus": 1}


def _batch(rows: dict[str, np.ndarray], layers: Sequence[LayerInfo]) -> Batch:
    """One block of the actors' rows as the engines' :class:`Batch`."""
    reasons = np.asarray(rows["reason"], dtype=object)
    ids = np.asarray(rows["id"], np.int64)
    good = reasons == ""
    skipped = [(int(i), str(r)) for i, r in zip(ids[~good], reasons[~good])]
    if not good.any():
        return Batch([], {}, skipped)
    reduced = {
        layer.name: Reduced(**{name: np.asarray(rows[f"{index}.{name}"])[good] for name in FIELDS},
                            positions=int(np.asarray(rows[f"{index}.positions"])[good][0]))
        for index, layer in enumerate(layers)
    }
    return Batch(ids[good].tolist(), reduced, skipped)

