"""The user's own checkpoint: reading a weight file safely, finding the state dict in it, and fitting it
to an architecture. Building the model and naming the upload live in :mod:`cnnviz.registry`
(:func:`cnnviz.registry.load_checkpoint`).

What is read, and how:

- ``.safetensors`` with the safetensors library (no code, no objects: a JSON header and raw tensors);
- PyTorch files (``.pt .pth .bin .ckpt``) only with ``torch.load(..., map_location="cpu", weights_only=True)``,
  which rebuilds tensors and plain containers and refuses every other Python object (a whole pickled model,
  anything whose unpickling would run code). Nothing here ever unpickles arbitrary objects.

The format is told by the file's first bytes (safetensors header, zip or pickle magic), not by its suffix
alone; other suffixes are refused. The size limit (``$CNNVIZ_MAX_CHECKPOINT_MB``, default 200 MB) is checked
before anything is read. The file is then hashed for the upload's name (in 1 MB chunks) and parsed, and its
identity (inode, size, modification time) checked after both, so the name is the weights'.

The usual shapes of training checkpoints are accepted, as timm's ``load_checkpoint(use_ema=True)`` reads
them: a bare state dict, or one nested under ``state_dict_ema`` / ``model_ema`` (EMA weights, preferred) or
``state_dict`` / ``model_state_dict`` / ``model``; wrapper prefixes (``module.`` from DataParallel/DDP and
timm's ModelEmaV2, ``_orig_mod.`` from torch.compile, ``model_ema.``) are removed. What was done is kept as
short notes for the report.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import logging
import os
import pickle
import re
import secrets
import stat
import threading
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
import xxhash

from .errors import CheckpointError, quoted

__all__ = [
    "ACCEPTED_SUFFIXES",
    "MAX_CHECKPOINT_BYTES",
    "MAX_LABELS_BYTES",
    "CheckpointFile",
    "CheckpointReport",
    "Fit",
    "choose_categories",
    "clean_keys",
    "display_filename",
    "file_name",
    "fit_state_dict",
    "load_weights",
    "open_checkpoint",
    "parse_labels",
    "read_labels",
    "read_state_dict",
    "shape_text",
    "sniff_format",
    "upload_name",
]

logger = logging.getLogger(__name__)

ACCEPTED_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
ACCEPTED = ".safetensors, .pt, .pth, .bin or .ckpt"
MAX_CHECKPOINT_BYTES = int(float(os.environ.get("CNNVIZ_MAX_CHECKPOINT_MB", "200")) * 2**20)
MAX_LABELS_BYTES = 2**20  # a labels file larger than 1 MB is refused before it is read
MAX_LABEL_CHARS = 200  # one label longer than this is refused
UPLOAD_PREFIX = "upload/"
SHOWN = 5  # keys named per kind in a message that says why a checkpoint does not fit

PICKLED_OBJECTS = (
    "This file holds pickled Python objects (a whole model?), which this app never unpickles; "
    "save `model.state_dict()` with torch.save or safetensors instead."
)
SAVE_STATE_DICT = "Save `model.state_dict()` with torch.save or safetensors and upload that file."

Format = Literal["safetensors", "torch-zip", "torch-pickle"]

# A per-process secret: upload names cannot be computed without the file and this key, and no name
# survives a restart.
_SECRET = secrets.token_bytes(32)
_SEED = int.from_bytes(secrets.token_bytes(8), "little")  # keys the fast digest of a file's bytes


# --------------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------------


def _megabytes(nbytes: int) -> str:
    """``"200 MB"``, ``"1.5 MB"``, ``"0.01 MB"``: a byte count for a sentence."""
    mb = nbytes / 2**20
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


def _sizes(size: int, limit: int) -> tuple[str, str]:
    """A size and a limit for a sentence, in bytes when megabytes would show them equal."""
    shown = _megabytes(size), _megabytes(limit)
    return shown if shown[0] != shown[1] else (f"{size:,} bytes", f"{limit:,} bytes")


def _too_big(filename: str, size: int, limit: int) -> CheckpointError:
    size_text, limit_text = _sizes(size, limit)
    return CheckpointError(
        f"The checkpoint {quoted(filename)} is {size_text}; this app reads checkpoints up to {limit_text} "
        "(set CNNVIZ_MAX_CHECKPOINT_MB to change that)."
    )


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint on disk that passed the suffix and size checks, and what its first bytes say it is.

    ``identity`` (device, inode, size, modification time) is checked again after each read, so the bytes
    hashed for the name and the bytes parsed are the same file's.
    """

    path: str
    filename: str  # as the user named it (for messages; see display_filename for showing it)
    size: int
    format: Format
    identity: tuple[int, int, int, int]


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def open_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Check a checkpoint file before anything is read from it but its first bytes.

    >>> import tempfile, safetensors.torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = folder.name + "/fc.safetensors"
    >>> safetensors.torch.save_file({"module.fc.weight": torch.ones(2, 3)}, path)
    >>> open_checkpoint(path).format
    'safetensors'
    >>> folder.cleanup()

    Raises:
        CheckpointError: the suffix is not one of ``ACCEPTED_SUFFIXES`` (the app reads nothing else), the
            file is missing, empty or not a regular file, it is larger than ``MAX_CHECKPOINT_BYTES`` (checked
            before reading, so a huge upload costs nothing), or its first bytes are neither safetensors nor
            PyTorch's.
    """
    path = os.path.abspath(os.fspath(path))  # kept to rebuild the model later, whatever the working directory
    filename = os.path.basename(path)
    if os.path.splitext(filename)[1].lower() not in ACCEPTED_SUFFIXES:
        raise CheckpointError(
            f"{quoted(filename)} is not a checkpoint this app reads: upload a {ACCEPTED} file holding "
            "the model's state dict."
        )
    limit = MAX_CHECKPOINT_BYTES
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # never open a FIFO or a device
            raise FileNotFoundError(path)
        if info.st_size > limit:
            raise _too_big(filename, info.st_size, limit)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"The checkpoint {quoted(filename)} is missing or cannot be read. Upload it again.") from e
    if info.st_size == 0:
        raise CheckpointError(f"The checkpoint {quoted(filename)} is empty. Upload the saved file again.")
    kind = sniff_format(head, info.st_size)
    if kind is None:
        raise CheckpointError(
            f"{quoted(filename)} is neither a safetensors nor a PyTorch checkpoint (its first bytes say so). "
            f"Upload a {ACCEPTED} file saved with safetensors or torch.save."
        )
    return CheckpointFile(path, filename, info.st_size, kind, _identity(info))


def _check_unchanged(file: CheckpointFile) -> None:
    """Raise when the file is not the one :func:`open_checkpoint` checked (replaced or rewritten since)."""
    try:
        same = _identity(os.stat(file.path)) == file.identity
    except OSError:
        same = False
    if not same:
        raise CheckpointError(f"The checkpoint {quoted(file.filename)} changed while it was read. Upload it again.")


def sniff_format(head: bytes, size: int) -> Format | None:
    """What a checkpoint's first bytes (and its size) say it is: safetensors (a little-endian header length
    within the file, then a JSON object), a PyTorch zip archive (``torch.save`` since 1.6), a PyTorch legacy
    pickle, or None.

    >>> import safetensors.torch
    >>> data = safetensors.torch.save({"w": torch.zeros(2)})
    >>> sniff_format(data[:16], len(data)), sniff_format(b"PK\\x03\\x04...", 100), sniff_format(b"GIF89a", 100)
    ('safetensors', 'torch-zip', None)
    """
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "torch-pickle"
    return None


def _read_safetensors(file: CheckpointFile) -> dict[str, torch.Tensor]:
    import safetensors.torch

    try:
        # load_file maps the file; each tensor is copied out at once, so the model owns its memory and
        # nothing faults if the user's file is later truncated (pread, which copies too, is 3-5x slower).
        return {k: v.clone() for k, v in safetensors.torch.load_file(file.path).items()}
    except Exception as e:  # the parser's error for any malformed header or data
        logger.info("safetensors could not read %s", file.path, exc_info=True)
        raise CheckpointError(
            f"The checkpoint {quoted(file.filename)} could not be read as a safetensors file: it is damaged or "
            f"incomplete. {SAVE_STATE_DICT}"
        ) from e


_TORCH_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _timm_args_allowed() -> Iterator[None]:
    """Allow ``argparse.Namespace`` (the ``args`` entry of timm training checkpoints, as timm's own loader
    does) for the one ``torch.load`` in the block. torch keeps the allow-list per process, so loads are
    serialised, and an entry the process had already allowed is left in place."""
    with _TORCH_LOAD_LOCK:
        if argparse.Namespace in torch.serialization.get_safe_globals():
            yield
            return
        with torch.serialization.safe_globals([argparse.Namespace]):
            yield


def _check_zip(file: CheckpointFile) -> None:
    """Refuse a zip whose entries would expand beyond the checkpoint limit (``torch.save`` stores them
    uncompressed; a zip bomb does not)."""
    try:
        with zipfile.ZipFile(file.path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"The checkpoint {quoted(file.filename)} could not be read as a PyTorch file: the archive is damaged "
            f"or incomplete. {SAVE_STATE_DICT}"
        ) from e
    if expanded > MAX_CHECKPOINT_BYTES:
        raise _too_big(file.filename, expanded, MAX_CHECKPOINT_BYTES)


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _read_torch(file: CheckpointFile) -> Any:
    if file.format == "torch-zip":
        _check_zip(file)
    try:
        # An open file, not the path: torch.load treats a path ending in .safetensors as safetensors, and
        # the format here is the one the first bytes told.
        with open(file.path, "rb") as f, _timm_args_allowed():
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL_RE.search(str(e))
        if found is not None:  # weights_only met a class or function it does not rebuild, and refused it
            raise CheckpointError(f"{PICKLED_OBJECTS} It refers to {found.group(1)[:80]}.") from e
        if "Unsupported operand" in str(e):  # pickle instructions torch.save never writes: made by pickle itself
            raise CheckpointError(
                f"{PICKLED_OBJECTS} It was written by Python's pickle, not by torch.save."
            ) from e
        logger.info("torch.load(weights_only=True) refused %s", file.path, exc_info=True)
        raise CheckpointError(
            f"The checkpoint {quoted(file.filename)} could not be read as a PyTorch file: its pickle data is "
            f"damaged or uses something this app does not load. {SAVE_STATE_DICT}"
        ) from e
    except Exception as e:  # corrupt archives and truncated pickles fail in many ways, none of them a bug here
        logger.info("torch.load could not read %s", file.path, exc_info=True)
        raise CheckpointError(
            f"The checkpoint {quoted(file.filename)} could not be read as a PyTorch file: it is damaged or "
            f"incomplete. {SAVE_STATE_DICT}"
        ) from e


# --------------------------------------------------------------------------------------------------
# Finding the state dict
# --------------------------------------------------------------------------------------------------

# Where training scripts put the weights, EMA first as timm's load_checkpoint(use_ema=True) prefers them.
_EMA_CONTAINERS = ("state_dict_ema", "model_ema")
_CONTAINERS = ("state_dict", "model_state_dict", "model")
# Prefixes a wrapper adds to every key: torch.compile, DataParallel/DDP (and ModelEmaV2's .module).
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_EMA_PREFIX = "model_ema."


def _names(keys: Sequence[object], limit: int = SHOWN) -> str:
    """``"'a', 'b', 'c' …"``: the first few keys, each quoted and cut."""
    shown = ", ".join(quoted(k) for k in keys[:limit])
    return shown + (" …" if len(keys) > limit else "")


def _plural(count: int, word: str, plural: str | None = None) -> str:
    """``"1 key"``, ``"3 keys"``, ``"2 entries"``."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _has_tensors(value: object) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values())


def _unwrap(obj: object, filename: str, notes: list[str], depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict inside what the file holds; non-tensor entries are dropped (and noted)."""
    if not isinstance(obj, Mapping):
        what = "a single tensor" if isinstance(obj, torch.Tensor) else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"The checkpoint {quoted(filename)} holds {what}, not a state dict (names of tensors). {SAVE_STATE_DICT}"
        )
    if depth < 3:
        ema = next((k for k in _EMA_CONTAINERS if _has_tensors(obj.get(k))), None)
        plain = next((k for k in _CONTAINERS if _has_tensors(obj.get(k))), None)
        chosen = ema or plain
        if chosen is not None:
            others = [k for k in obj if k not in (chosen, plain)]
            if ema is not None:
                rather = f" rather than those under {quoted(plain)}" if plain else ""
                notes.append(f"took the EMA weights under {quoted(ema)}{rather}")
            else:
                notes.append(f"took the weights under {quoted(chosen)}")
            if others:
                notes.append(f"ignored the file's other {_plural(len(others), 'entry', 'entries')}: {_names(others)}")
            return _unwrap(obj[chosen], filename, notes, depth + 1)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    dropped = [k for k in obj if k not in tensors]
    if not tensors:
        raise CheckpointError(
            f"The checkpoint {quoted(filename)} holds no tensors (its entries: {_names(list(obj)) or 'none'}). "
            f"{SAVE_STATE_DICT}"
        )
    if dropped:
        notes.append(f"ignored {_plural(len(dropped), 'entry', 'entries')} that "
                     f"{'is' if len(dropped) == 1 else 'are'} not tensors: {_names(dropped)}")
    return tensors


def _strip(state: dict[str, torch.Tensor], prefix: str, notes: list[str]) -> dict[str, torch.Tensor]:
    notes.append(f"removed the {quoted(prefix)} prefix from {_plural(len(state), 'key')}")
    return {k[len(prefix):]: v for k, v in state.items()}


def clean_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Remove the prefixes wrappers put on every key (``module.``, ``_orig_mod.``, in any order and depth,
    as timm's ``clean_state_dict`` does) and take the EMA copy when the keys hold one under ``model_ema.``.

    >>> keys, notes = clean_keys({"module._orig_mod.fc.weight": torch.zeros(2, 3)})
    >>> list(keys), notes
    (['fc.weight'], ("removed the 'module.' prefix from 1 key", "removed the '_orig_mod.' prefix from 1 key"))
    """
    state, notes = dict(state), []
    while True:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            ema = {k: v for k, v in state.items() if k.startswith(_EMA_PREFIX)}
            if not ema:
                return state, tuple(notes)
            if len(ema) < len(state):
                notes.append(f"took the EMA weights (the keys starting {quoted(_EMA_PREFIX)})")
            state = _strip(ema, _EMA_PREFIX, notes)
            continue
        state = _strip(state, prefix, notes)


def read_state_dict(file: CheckpointFile) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The state dict in a checkpoint file (see :func:`open_checkpoint`), and notes on how it was found.

    >>> import tempfile, safetensors.torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = folder.name + "/fc.safetensors"
    >>> safetensors.torch.save_file({"module.fc.weight": torch.ones(2, 3)}, path)
    >>> state, notes = read_state_dict(open_checkpoint(path))
    >>> list(state), notes
    (['fc.weight'], ("removed the 'module.' prefix from 1 key",))
    >>> folder.cleanup()

    Raises:
        CheckpointError: the file is damaged, it holds pickled Python objects that ``weights_only`` refuses
            (a whole model), it holds no tensors, or it changed since it was opened.
    """
    notes: list[str] = []
    if file.format == "safetensors":
        state = _read_safetensors(file)
    else:
        state = _unwrap(_read_torch(file), file.filename, notes)
    _check_unchanged(file)
    state, cleaned = clean_keys(state)
    return state, (*notes, *cleaned)


# --------------------------------------------------------------------------------------------------
# Fitting it to a model
# --------------------------------------------------------------------------------------------------


def shape_text(shape: Sequence[int]) -> str:
    """``"32×64×3×3"`` (``"scalar"`` for a 0-d tensor).

    >>> shape_text(torch.Size([32, 64, 3, 3])), shape_text(())
    ('32×64×3×3', 'scalar')
    """
    return "×".join(str(int(d)) for d in shape) or "scalar"


@dataclass(frozen=True)
class Fit:
    """A state dict that fits a model key for key (renamed, counters filled in), what was done to it, and
    ``num_classes``: the checkpoint's number of classes when its classifier alone differs from the model's
    (then rebuild the architecture with that many and fit again), else None."""

    state: dict[str, torch.Tensor]
    notes: tuple[str, ...]
    num_classes: int | None = None


_COUNTER = "num_batches_tracked"


def _common_prefix(keys: Sequence[str]) -> str | None:
    """The first dotted component shared by every key (``"model."`` of a Lightning module), or None."""
    first = {k.split(".", 1)[0] for k in keys if "." in k}
    if len(first) == 1 and all("." in k for k in keys):
        return first.pop() + "."
    return None


def _natural(key: str) -> tuple:
    """Sort key putting ``layer2.10`` after ``layer2.9``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


def _other_classes(mis_shaped: list[tuple[str, tuple, tuple]], classes: int | None) -> int | None:
    """N when every mis-shaped key is a classifier tensor: ``classes`` rows in the model, N in the file,
    all other dimensions equal."""
    if not classes or not mis_shaped:
        return None
    found = {ckpt[0] for _, ckpt, model in mis_shaped
             if len(ckpt) == len(model) >= 1 and model[0] == classes and ckpt[1:] == model[1:]}
    fits = all(len(ckpt) == len(model) >= 1 and model[0] == classes and ckpt[1:] == model[1:]
               for _, ckpt, model in mis_shaped)
    return found.pop() if fits and len(found) == 1 and 0 not in found else None


def fit_state_dict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, name: str, classes: int | None = None
) -> Fit:
    """Match a checkpoint's state dict to ``model``'s, key by key and shape by shape.

    A prefix every key shares that the model lacks (Lightning's ``model.``) is removed. A missing
    ``num_batches_tracked`` (older checkpoints) takes the model's own. When ``classes`` (the model's number of
    classes) is given and the only differences are the classifier's rows, the result says how many classes
    the checkpoint has (:attr:`Fit.num_classes`) instead of raising. ``model`` may hold its parameters on the
    meta device: only keys and shapes are compared.

    >>> fit = fit_state_dict(torch.nn.Linear(3, 2), {"weight": torch.ones(5, 3), "bias": torch.zeros(5)}, name="probe", classes=2)
    >>> fit.num_classes
    5

    Raises:
        CheckpointError: keys are missing, unexpected or of another shape, naming the first few of each
            with counts (mis-shaped ones with both shapes) and ``name``, the model it was compared with.
    """
    expected = model.state_dict()
    state, notes = dict(state), []
    if state and not state.keys() & expected.keys() and (prefix := _common_prefix(list(state))) is not None:
        stripped = {k[len(prefix):]: v for k, v in state.items()}
        if stripped.keys() & expected.keys():
            state = _strip(state, prefix, notes)
    counters = [k for k in expected if k not in state and k.rsplit(".", 1)[-1] == _COUNTER]
    for key in counters:
        state[key] = expected[key]
    if counters:
        notes.append(f"set {_plural(len(counters), 'missing BatchNorm counter')} ({_COUNTER}) to the model's own")
    missing = [k for k in expected if k not in state]
    unexpected = sorted((k for k in state if k not in expected), key=_natural)  # files need not keep the model's order
    mis_shaped = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not missing and not unexpected:
        if not mis_shaped:
            return Fit(state, tuple(notes))
        other = _other_classes(mis_shaped, classes)
        if other is not None:
            return Fit(state, tuple(notes), other)
    problems = []
    if missing:
        problems.append(f"{_plural(len(missing), 'key')} of the model {'is' if len(missing) == 1 else 'are'} "
                        f"missing from it ({_names(missing)})")
    if unexpected:
        problems.append(f"{_plural(len(unexpected), 'key')} in it {'is' if len(unexpected) == 1 else 'are'} "
                        f"not in the model ({_names(unexpected)})")
    if mis_shaped:
        shown = "; ".join(f"{quoted(k)}: checkpoint {shape_text(c)}, model {shape_text(m)}" for k, c, m in mis_shaped[:SHOWN])
        problems.append(f"{_plural(len(mis_shaped), 'tensor')} {'has' if len(mis_shaped) == 1 else 'have'} "
                        f"another shape ({shown}{' …' if len(mis_shaped) > SHOWN else ''})")
    raise CheckpointError(
        f"This checkpoint does not fit {name}: {'; '.join(problems)}. Pick the architecture it was trained with."
    )


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[int, tuple[str, ...]]:
    """Put a fitted state dict's tensors into ``model`` (strictly, by assignment: parameters may be on
    the meta device beforehand and nothing is copied twice). Each tensor takes the dtype of the model's own
    (a float16 checkpoint becomes float32) and owns its memory. Returns (tensors loaded, notes).

    >>> layer = torch.nn.Linear(2, 1)
    >>> load_weights(layer, {"weight": torch.ones(1, 2, dtype=torch.float16), "bias": torch.zeros(1)})
    (2, ('converted 1 float16 tensor to float32',))
    >>> layer.weight.dtype, layer.weight.tolist()
    (torch.float32, [[1.0, 1.0]])

    Raises:
        RuntimeError: a parameter or buffer is still on the meta device afterwards (the model held a
            tensor its state dict does not list); build the model for real and load again.
    """
    ready: dict[str, torch.Tensor] = {}
    converted: Counter[tuple[str, str]] = Counter()  # (from dtype, to dtype) -> tensors
    for key, reference in model.state_dict().items():
        tensor = state[key].detach()
        if tensor.dtype != reference.dtype:
            converted[_dtype_name(tensor.dtype), _dtype_name(reference.dtype)] += 1
            tensor = tensor.to(reference.dtype)
        elif tensor.untyped_storage().nbytes() > tensor.nbytes or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)  # a view of a larger storage: keep only its own bytes
        ready[key] = tensor
    model.load_state_dict(ready, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{len(left)} tensors of the model are still on the meta device, e.g. {left[0]!r}")
    notes = tuple(f"converted {_plural(n, f'{old} tensor')} to {new}" for (old, new), n in converted.items())
    return len(ready), notes


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


def parse_labels(text: str) -> tuple[str, ...]:
    """One label per line, stripped; blank lines at the end are ignored.

    >>> parse_labels("cat\\n dog \\r\\n\\n")
    ('cat', 'dog')

    Raises:
        CheckpointError: a blank line before the last label, a label over ``MAX_LABEL_CHARS``, or no labels.
    """
    lines = [line.strip() for line in text.removeprefix("\ufeff").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise CheckpointError("The labels file is empty: give one class name per line, in class order.")
    for number, line in enumerate(lines, 1):
        if not line:
            raise CheckpointError(f"Line {number} of the labels file is blank: give every class a name, one per line.")
        if len(line) > MAX_LABEL_CHARS:
            raise CheckpointError(
                f"Line {number} of the labels file is {len(line)} characters long; labels may have up to "
                f"{MAX_LABEL_CHARS}."
            )
    return tuple(lines)


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a UTF-8 text file, one per line (see :func:`parse_labels`), at most
    ``MAX_LABELS_BYTES``.

    Raises:
        CheckpointError: the file is missing, larger than the limit, not UTF-8 text, or malformed.
    """
    filename = os.path.basename(os.fspath(path))
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFoundError(path)
        if info.st_size > MAX_LABELS_BYTES:
            size_text, limit_text = _sizes(info.st_size, MAX_LABELS_BYTES)
            raise CheckpointError(
                f"The labels file {quoted(filename)} is {size_text}; labels files may have up to {limit_text} "
                "(one class name per line)."
            )
        with open(path, "rb") as f:
            data = f.read(MAX_LABELS_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"The labels file {quoted(filename)} is missing or cannot be read. Upload it again.") from e
    if len(data) > MAX_LABELS_BYTES:
        raise CheckpointError(
            f"The labels file {quoted(filename)} grew larger than the {_megabytes(MAX_LABELS_BYTES)} labels files "
            "may have while it was read."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"The labels file {quoted(filename)} is not UTF-8 text: give one class name per line, saved as UTF-8."
        ) from e
    return parse_labels(text)


LabelsKind = Literal["ImageNet", "yours"]


def choose_categories(
    num_classes: int, labels: Sequence[str] | None, own: Sequence[str] | None
) -> tuple[tuple[str, ...] | None, LabelsKind | None]:
    """The class names for a checkpoint with ``num_classes`` outputs: the user's ``labels`` (one per class),
    else the architecture's ``own`` (ImageNet) names when the count is theirs, else none (no predictions).

    >>> choose_categories(2, ["cat", "dog"], None), choose_categories(3, None, None)
    ((('cat', 'dog'), 'yours'), (None, None))

    Raises:
        CheckpointError: ``labels`` does not have exactly ``num_classes`` entries.
    """
    if labels is not None:
        if len(labels) != num_classes:
            raise CheckpointError(
                f"The labels file has {_plural(len(labels), 'line')} but the checkpoint has "
                f"{_plural(num_classes, 'class', 'classes')}: give one label per class, in class order."
            )
        return tuple(labels), "yours"
    if own and len(own) == num_classes:
        return tuple(own), "ImageNet"
    return None, None


# --------------------------------------------------------------------------------------------------
# Naming and reporting
# --------------------------------------------------------------------------------------------------


def _mac(architecture: str, labels: Sequence[str] | None, size: int) -> hmac.HMAC:
    """The HMAC of an upload, fed with everything but the checkpoint's bytes (each part length-prefixed)."""
    mac = hmac.new(_SECRET, digestmod=hashlib.sha256)
    for part in (architecture.encode(), None if labels is None else "\n".join(labels).encode()):
        mac.update(b"\0" if part is None else b"\1" + len(part).to_bytes(8, "little") + part)
    mac.update(size.to_bytes(8, "little"))
    return mac


def _content() -> xxhash.xxh3_128:
    """The digest of a checkpoint's bytes: XXH3-128 with this process's secret seed. It runs at memory
    speed (~2 ms for 47 MB, where SHA-256 takes ~27 ms, as long as everything else in a load together);
    the HMAC over it keeps the name a keyed cryptographic hash of everything that makes the model."""
    return xxhash.xxh3_128(seed=_SEED)


def upload_name(architecture: str, data: bytes, labels: Sequence[str] | None = None) -> str:
    """``"upload/<32 hex>"``: an HMAC-SHA256, keyed with this process's secret, over the architecture key,
    the labels (when given) and the checkpoint's bytes (their seeded XXH3-128 digest, :func:`_content`).
    The same file for the same architecture gets the same name in this process; nobody can compute a name
    without the file and the secrets.

    >>> name = upload_name("resnet18", b"weights")
    >>> name == upload_name("resnet18", b"weights") != upload_name("resnet34", b"weights"), len(name)
    (True, 39)
    """
    mac = _mac(architecture, labels, len(data))
    content = _content()
    content.update(data)
    mac.update(content.digest())
    return UPLOAD_PREFIX + mac.hexdigest()[:32]


_CHUNK = 2**20


def file_name(file: CheckpointFile, architecture: str, labels: Sequence[str] | None = None) -> str:
    """:func:`upload_name` of a checkpoint file, read in 1 MB chunks (no mapping, no copy of the whole file).

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = folder.name + "/w.pt"
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"\\x80\\x02weights")
    >>> file_name(open_checkpoint(path), "resnet18") == upload_name("resnet18", b"\\x80\\x02weights")
    True
    >>> folder.cleanup()

    Raises:
        CheckpointError: the file changed since it was opened.
    """
    mac, content = _mac(architecture, labels, file.size), _content()
    buffer = bytearray(_CHUNK)
    read = 0
    try:
        with open(file.path, "rb", buffering=0) as f:
            while read <= file.size and (count := f.readinto(buffer)):
                content.update(memoryview(buffer)[:count])
                read += count
    except OSError:
        read = -1
    if read != file.size:
        raise CheckpointError(f"The checkpoint {quoted(file.filename)} changed while it was read. Upload it again.")
    _check_unchanged(file)
    mac.update(content.digest())
    return UPLOAD_PREFIX + mac.hexdigest()[:32]


_UNSAFE_CHARS = re.compile(r"[^\w .()+\-]")


def display_filename(filename: str, limit: int = 40) -> str:
    """A file name fit to show: only letters, digits, spaces and ``._()+-`` (others become ``_``), cut in the
    middle to ``limit`` characters.

    >>> display_filename('[click](javascript:x) <b>my<b> model, epoch 37.safetensors')
    '_click_(javascript_x…poch 37.safetensors'
    """
    name = _UNSAFE_CHARS.sub("_", os.path.basename(filename)) or "checkpoint"
    if len(name) <= limit:
        return name
    tail = limit // 2 - 1
    return name[: limit - tail - 1] + "…" + name[-tail:]


@dataclass(frozen=True)
class CheckpointReport:
    """What :func:`cnnviz.load_checkpoint` did with a user's checkpoint.

    ``name``: the model name to use everywhere (``"upload/<32 hex>"``); ``model``: the architecture's key;
    ``tensors``: how many tensors came from the file; ``labels``: ``"ImageNet"`` (the architecture's own),
    ``"yours"`` (the labels file) or None (no labels: predictions are hidden).

    >>> report = CheckpointReport("upload/" + "0" * 32, "resnet18", "ResNet-18 · your checkpoint r.pt",
    ...                           "r.pt", 122, 11_689_512, 1000, "ImageNet", ("removed the 'module.' prefix from 122 keys",))
    >>> print(report.describe())
    Loaded 122 tensors (11.7 M parameters) from `r.pt` into resnet18.
    1000 classes, with the ImageNet labels of resnet18 (no labels file was given).
    Notes: removed the 'module.' prefix from 122 keys.
    Use it as model `upload/00000000000000000000000000000000` in every view and endpoint while the server holds it.
    """

    name: str
    model: str
    display: str
    filename: str
    tensors: int
    parameters: int
    num_classes: int | None
    labels: LabelsKind | None
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """A short plain-text report (markdown-safe: the file name is already sanitised)."""
        if self.labels == "yours":
            classes = f"{self.num_classes} classes, labelled from your file."
        elif self.labels == "ImageNet":
            classes = f"{self.num_classes} classes, with the ImageNet labels of {self.model} (no labels file was given)."
        elif self.num_classes:
            classes = (f"{self.num_classes} classes without names, so predictions are hidden "
                       "(give a labels file, one name per line, to see them).")
        else:
            classes = "No classifier output."
        lines = [
            f"Loaded {self.tensors} tensors ({self.parameters / 1e6:.1f} M parameters) from `{self.filename}` "
            f"into {self.model}.",
            classes,
        ]
        if self.notes:
            lines.append("Notes: " + "; ".join(self.notes) + ".")
        lines.append(f"Use it as model `{self.name}` in every view and endpoint while the server holds it.")
        return "\n".join(lines)
