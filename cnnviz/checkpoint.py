"""The user's own checkpoint: reading a weight file safely, finding the state dict in it, and fitting it
to an architecture. Building the model and naming the upload live in :mod:`cnnviz.loading`
(:func:`cnnviz.loading.load_checkpoint`).

What is read, and how:

- ``.safetensors`` with the safetensors library (no code, no objects: a JSON header and raw tensors);
- PyTorch files (``.pt .pth .bin .ckpt``) only with ``torch.load(..., map_location="cpu", weights_only=True)``,
  which rebuilds tensors and plain containers and refuses every other Python object (a whole pickled model,
  anything whose unpickling would run code). Nothing here ever unpickles arbitrary objects.

The format is told by the file's first bytes (safetensors header, zip or pickle magic), not by its suffix
alone; other suffixes are refused. The size limit (``$CNNVIZ_MAX_CHECKPOINT_MB``, default 200 MB) is checked
before anything is read. The file is then hashed for the upload's name (in 1 MB chunks) and parsed, and its
identity (inode, size, modification time) checked after both, so the name is the weights'.

A small file can claim a great deal: a tensor saved as ``torch.zeros(()).expand(1_500_000, 512)`` takes 4
bytes on disk and 3 GB once copied into a model, and a header can list a million empty tensors. So nothing
is materialised before the totals are known, and each total has a limit checked first: the tensors' index
(safetensors' JSON header, torch's pickle: ``MAX_INDEX_BYTES``) and their count (``MAX_TENSORS``) before one
tensor is built; their bytes at full size (``MAX_TENSOR_BYTES``, views counted as what copying them makes)
once they are listed; the classifier's classes (``MAX_CLASSES``) when it is fitted. Tensors stay in the file
(safetensors and ``torch.load(mmap=True)`` map it) until :func:`load_weights` copies each one into the model.
TorchScript archives and weights that hold NaN or infinity are refused with what to upload instead.

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
import io
import logging
import math
import os
import pickle
import re
import secrets
import stat
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import xxhash

from .errors import CheckpointError, is_allocation_failure, plural, quoted, shape_text

__all__ = [
    "ACCEPTED_SUFFIXES",
    "MAX_CHECKPOINT_BYTES",
    "MAX_CLASSES",
    "MAX_INDEX_BYTES",
    "MAX_LABELS_BYTES",
    "MAX_TENSORS",
    "MAX_TENSOR_BYTES",
    "CheckpointFile",
    "CheckpointReport",
    "Fit",
    "MetaTensorsLeft",
    "allocation_errors",
    "check_finite",
    "choose_categories",
    "clean_keys",
    "display_filename",
    "file_name",
    "fit_state_dict",
    "fitted_parameters",
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
# Real state dicts hold a few hundred to a few thousand tensors (EfficientNet-B7: 1,200), a timm training
# checkpoint (model, EMA and the optimizer's moments) about four times as many; more is a file made to keep a
# worker busy building tensors (a million empty ones took 67-229 s before this limit).
MAX_TENSORS = 20_000
# A checkpoint's index of its tensors (safetensors' JSON header, torch's pickle) takes ~100 bytes a tensor, so
# 2 MB is room for MAX_TENSORS. Unpickling is pure Python (~60 µs a tensor): this also bounds that time to
# about a second. EfficientNet-B7's training checkpoint (4,500 tensors) has 0.45 MB of pickle.
MAX_INDEX_BYTES = 2 * 2**20
# The tensors at full size (numel × element size, whatever their strides). A file within the size limit holds
# that much at most, twice when tensors share storage (tied weights count once per name); beyond it lie only
# views (expand(), stride 0) that copying them into a model would make full size.
MAX_TENSOR_BYTES = 2 * MAX_CHECKPOINT_BYTES
MAX_CLASSES = 100_000  # ImageNet-21k, the largest label set in use, has 21,843 classes
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
    """``"200 MB"``, ``"1.5 MB"``, ``"16 KB"``, ``"4,096 GB"``: a byte count for a sentence."""
    mb = nbytes / 2**20
    if mb >= 10 * 2**10:
        return f"{mb / 2**10:,.0f} GB"
    if mb < 0.1:
        return f"{nbytes / 2**10:.2g} KB"
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


def _damaged(file: CheckpointFile, what: str, detail: str = "it is damaged or incomplete") -> CheckpointError:
    return CheckpointError(
        f"The checkpoint {quoted(file.filename)} could not be read as {what}: {detail}. {SAVE_STATE_DICT}"
    )


def _too_many_tensors(filename: str, count: int | None) -> CheckpointError:
    """The sentence for a checkpoint of ``count`` tensors (None: more than ``MAX_TENSORS``, not all counted)."""
    held = f"more than {MAX_TENSORS:,}" if count is None else f"{count:,}"
    return CheckpointError(
        f"The checkpoint {quoted(filename)} holds {held} tensors; this app reads checkpoints of up to "
        f"{MAX_TENSORS:,} (a model's state dict has a few hundred to a few thousand). {SAVE_STATE_DICT}"
    )


def _index_too_big(filename: str, size: int | None, what: str) -> CheckpointError:
    amount = f"{_megabytes(size)}" if size is not None else f"more than {_megabytes(MAX_INDEX_BYTES)}"
    return CheckpointError(
        f"The checkpoint {quoted(filename)} lists its tensors in {amount} of {what}; this app reads up to "
        f"{_megabytes(MAX_INDEX_BYTES)}, room for {MAX_TENSORS:,} tensors (a model's state dict needs well under "
        f"1 MB). {SAVE_STATE_DICT}"
    )


_SAFETENSORS_ENTRY = b'"data_offsets"'  # once per tensor in a safetensors header


def _check_safetensors_header(file: CheckpointFile) -> None:
    """Count the tensors a safetensors header lists before the library builds one: its 8-byte length, then
    at most ``MAX_INDEX_BYTES`` of it, searched for the key every tensor's entry has (a C-speed count, where
    parsing a million entries would hold the worker)."""
    try:
        with open(file.path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            head = f.read(min(length, MAX_INDEX_BYTES))
    except OSError as e:
        raise CheckpointError(f"The checkpoint {quoted(file.filename)} is missing or cannot be read. Upload it again.") from e
    listed = head.count(_SAFETENSORS_ENTRY)
    if listed > MAX_TENSORS:
        raise _too_many_tensors(file.filename, listed if length == len(head) else None)
    if length > MAX_INDEX_BYTES:
        raise _index_too_big(file.filename, length, "safetensors header")


def _read_safetensors(file: CheckpointFile) -> dict[str, torch.Tensor]:
    import safetensors.torch

    _check_safetensors_header(file)
    try:
        # Mapped, not read: load_weights copies each tensor once every limit has been checked. Until then the
        # tensors need the file as it is (a truncated mapping faults): it is the server's own copy of the upload.
        return safetensors.torch.load_file(file.path)
    except Exception as e:  # the parser's error for any malformed header or data
        logger.info("safetensors could not read %s", file.path, exc_info=True)
        raise _damaged(file, "a safetensors file") from e


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


# torch.save writes a handful of records beside one per storage (data.pkl, version, byteorder, ...).
_ZIP_OTHER_RECORDS = 16
# A central-directory entry is 46 bytes and a name: torch.save's names are the file's stem (up to 255
# characters) and "/data/N". zipfile builds one object per entry, however many the directory claims.
_ZIP_ENTRY_BYTES = 512
_ZIP_END = b"PK\x05\x06"  # end of central directory record
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_END = b"PK\x06\x06"


def _zip_directory(f: io.BufferedReader, size: int) -> tuple[int, int]:
    """(entries, bytes) of a zip's central directory as its end record declares them (zip64's when the
    16/32-bit fields are full), read from the file's tail before zipfile parses the directory. (0, 0) when
    there is no end record (zipfile then says the archive is damaged)."""
    tail_length = min(size, 22 + 0xFFFF)  # the record, and the longest comment it may have
    f.seek(size - tail_length)
    tail = f.read(tail_length)
    at = tail.rfind(_ZIP_END)
    if at < 0:
        return 0, 0
    entries = int.from_bytes(tail[at + 10 : at + 12], "little")
    directory = int.from_bytes(tail[at + 12 : at + 16], "little")
    if (entries == 0xFFFF or directory == 0xFFFFFFFF) and at >= 20 and tail[at - 20 : at - 16] == _ZIP64_LOCATOR:
        f.seek(int.from_bytes(tail[at - 12 : at - 4], "little"))
        record = f.read(56)
        if record[:4] == _ZIP64_END:
            entries = int.from_bytes(record[32:40], "little")
            directory = int.from_bytes(record[40:48], "little")
    return entries, directory


def _is_torchscript(names: Sequence[str]) -> bool:
    """A torch.jit.save archive: its compiled code (``code/``) and ``constants.pkl`` beside the data, as
    torch.load tells them apart (``_is_torchscript_zip``)."""
    return any(n.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in f"/{n}" for n in names)


def _torchscript(filename: str) -> CheckpointError:
    return CheckpointError(
        f"{quoted(filename)} is a TorchScript archive (saved with torch.jit.save): a compiled program, which this "
        "app does not run. Upload the model's weights instead: torch.save(model.state_dict(), 'model.pt') or "
        "safetensors' save_file (from this file: torch.jit.load(path).state_dict())."
    )


def _check_zip(file: CheckpointFile) -> None:
    """Refuse, before torch reads the archive: one with more entries than a checkpoint of ``MAX_TENSORS``
    storages has, a TorchScript program, a pickle over ``MAX_INDEX_BYTES``, and entries that would expand
    beyond the checkpoint limit (``torch.save`` stores them uncompressed; a zip bomb does not)."""
    most = MAX_TENSORS + _ZIP_OTHER_RECORDS  # entries: one per storage
    try:
        with open(file.path, "rb") as f:
            entries, directory = _zip_directory(f, file.size)
            if entries > most or directory > most * _ZIP_ENTRY_BYTES:
                infos = None
            else:
                with zipfile.ZipFile(f) as archive:
                    infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise _damaged(file, "a PyTorch file", "the archive is damaged or incomplete") from e
    if infos is None:
        raise _too_many_tensors(file.filename, None)
    if _is_torchscript([info.filename for info in infos]):
        raise _torchscript(file.filename)
    expanded = sum(info.file_size for info in infos)
    if expanded > MAX_CHECKPOINT_BYTES:
        raise _too_big(file.filename, expanded, MAX_CHECKPOINT_BYTES)
    pickled = max((i.file_size for i in infos if i.filename.rsplit("/", 1)[-1] == "data.pkl"), default=0)
    if pickled > MAX_INDEX_BYTES:
        raise _index_too_big(file.filename, pickled, "pickle data")


class _PickleBudget(io.BufferedReader):
    """A legacy (pre-zip) PyTorch file as torch.load reads it, refused once its pickles pass
    ``MAX_INDEX_BYTES``: they are read with ``read``/``readline``, counted here, while the storages' bytes
    are read from the file descriptor and are not. (A zip's pickle is one record, measured beforehand.)"""

    def __init__(self, path: str, filename: str) -> None:
        super().__init__(io.FileIO(path))
        self.filename = filename
        self.left = MAX_INDEX_BYTES

    def _spend(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise _index_too_big(self.filename, None, "pickle data")
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._spend(super().read(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._spend(super().readline(size))


def _torch_load(file: CheckpointFile) -> Any:
    """``torch.load(weights_only=True)`` of the file: mapped (``mmap=True``) when it is a zip archive, so the
    storages stay on disk until load_weights copies them."""
    if file.format == "torch-pickle":
        with _PickleBudget(file.path, file.filename) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    if file.path.endswith(".safetensors"):  # torch.load would take the path for a safetensors file
        with open(file.path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    return torch.load(file.path, map_location="cpu", weights_only=True, mmap=True)


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _read_torch(file: CheckpointFile) -> Any:
    if file.format == "torch-zip":
        _check_zip(file)
    try:
        # The format is the one the first bytes told, never the suffix (see _torch_load).
        with _timm_args_allowed():
            return _torch_load(file)
    except CheckpointError:  # a limit _PickleBudget enforces
        raise
    except pickle.UnpicklingError as e:
        found = _GLOBAL_RE.search(str(e))
        if found is not None:  # weights_only met a class or function it does not rebuild, and refused it
            raise CheckpointError(f"{PICKLED_OBJECTS} It refers to {found.group(1)[:80]}.") from e
        if "Unsupported operand" in str(e):  # pickle instructions torch.save never writes: made by pickle itself
            raise CheckpointError(
                f"{PICKLED_OBJECTS} It was written by Python's pickle, not by torch.save."
            ) from e
        logger.info("torch.load(weights_only=True) refused %s", file.path, exc_info=True)
        raise _damaged(file, "a PyTorch file", "its pickle data is damaged or uses something this app does not load") from e
    except Exception as e:  # corrupt archives and truncated pickles fail in many ways, none of them a bug here
        logger.info("torch.load could not read %s", file.path, exc_info=True)
        raise _damaged(file, "a PyTorch file") from e


def _full_size(tensor: torch.Tensor) -> int:
    """Bytes ``tensor`` takes once copied out: every element, however few its storage holds (stride 0)."""
    return tensor.numel() * tensor.element_size()


def _check_totals(state: Mapping[str, torch.Tensor], file: CheckpointFile) -> None:
    """Refuse a state dict of more than ``MAX_TENSORS`` tensors or ``MAX_TENSOR_BYTES`` at full size, from
    shapes alone: nothing is read or copied yet."""
    if len(state) > MAX_TENSORS:
        raise _too_many_tensors(file.filename, len(state))
    full = sum(_full_size(t) for t in state.values())
    if full <= MAX_TENSOR_BYTES:
        return
    views = [k for k, t in state.items() if _full_size(t) > t.untyped_storage().nbytes()]
    why = (f": {plural(len(views), 'tensor')} ({_names(views)}) {'is a view' if len(views) == 1 else 'are views'} "
           "that repeat their values (saved from expand() or overlapping slices), which a model copies out in full"
           if views else "")
    size_text, limit_text = _sizes(full, MAX_TENSOR_BYTES)
    raise CheckpointError(
        f"The checkpoint {quoted(file.filename)} is {_megabytes(file.size)}, but its tensors take {size_text} at "
        f"full size{why}. This app reads checkpoints whose tensors take up to {limit_text}. {SAVE_STATE_DICT}"
    )


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
                notes.append(f"ignored the file's other {plural(len(others), 'entry', 'entries')}: {_names(others)}")
            return _unwrap(obj[chosen], filename, notes, depth + 1)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    dropped = [k for k in obj if k not in tensors]
    if not tensors:
        raise CheckpointError(
            f"The checkpoint {quoted(filename)} holds no tensors (its entries: {_names(list(obj)) or 'none'}). "
            f"{SAVE_STATE_DICT}"
        )
    if dropped:
        notes.append(f"ignored {plural(len(dropped), 'entry', 'entries')} that "
                     f"{'is' if len(dropped) == 1 else 'are'} not tensors: {_names(dropped)}")
    return tensors


def _strip(state: dict[str, torch.Tensor], prefix: str, notes: list[str]) -> dict[str, torch.Tensor]:
    notes.append(f"removed the {quoted(prefix)} prefix from {plural(len(state), 'key')}")
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

    The tensors are not read yet (they map the file): :func:`load_weights` copies them.

    Raises:
        CheckpointError: the file is damaged, it holds pickled Python objects that ``weights_only`` refuses
            (a whole model) or a TorchScript program, it holds no tensors, it changed since it was opened, or
            it is over a limit that keeps one upload from taking the server's memory or time: its index of
            tensors (``MAX_INDEX_BYTES``), their number (``MAX_TENSORS``) or their bytes at full size
            (``MAX_TENSOR_BYTES``), each checked before any tensor is materialised.
    """
    notes: list[str] = []
    if file.format == "safetensors":
        state = _read_safetensors(file)
    else:
        state = _unwrap(_read_torch(file), file.filename, notes)
    _check_totals(state, file)
    _check_unchanged(file)
    state, cleaned = clean_keys(state)
    return state, (*notes, *cleaned)


# --------------------------------------------------------------------------------------------------
# Fitting it to a model
# --------------------------------------------------------------------------------------------------


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
            with counts (mis-shaped ones with both shapes) and ``name``, the model it was compared with; or
            the classifier has more than ``MAX_CLASSES`` classes (a model built with them would be huge).
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
        notes.append(f"set {plural(len(counters), 'missing BatchNorm counter')} ({_COUNTER}) to the model's own")
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
            if other > MAX_CLASSES:
                raise CheckpointError(
                    f"This checkpoint's classifier has {other:,} classes; this app builds classifiers of up to "
                    f"{MAX_CLASSES:,} (ImageNet-21k, the largest label set in use, has 21,843)."
                )
            return Fit(state, tuple(notes), other)
    problems = []
    if missing:
        problems.append(f"{plural(len(missing), 'key')} of the model {'is' if len(missing) == 1 else 'are'} "
                        f"missing from it ({_names(missing)})")
    if unexpected:
        problems.append(f"{plural(len(unexpected), 'key')} in it {'is' if len(unexpected) == 1 else 'are'} "
                        f"not in the model ({_names(unexpected)})")
    if mis_shaped:
        shown = "; ".join(f"{quoted(k)}: checkpoint {shape_text(c)}, model {shape_text(m)}" for k, c, m in mis_shaped[:SHOWN])
        problems.append(f"{plural(len(mis_shaped), 'tensor')} {'has' if len(mis_shaped) == 1 else 'have'} "
                        f"another shape ({shown}{' …' if len(mis_shaped) > SHOWN else ''})")
    raise CheckpointError(
        f"This checkpoint does not fit {name}: {'; '.join(problems)}. Pick the architecture it was trained with."
    )


def fitted_parameters(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """How many parameters ``model`` has once built with the shapes of ``state`` (a :class:`Fit`'s state:
    every key of the model, the classifier's rows perhaps another number), counted from shapes alone, so
    a model too large for the server is refused before it is built.

    >>> fitted_parameters(torch.nn.Linear(3, 2), {"weight": torch.ones(5, 3), "bias": torch.zeros(5)})
    20
    """
    return sum(math.prod(state[name].shape) for name, _ in model.named_parameters())


def check_finite(state: Mapping[str, torch.Tensor], filename: str) -> None:
    """Refuse a state dict whose floating tensors hold NaN or infinity.

    >>> check_finite({"w": torch.tensor([1.0, float("nan")])}, "run.pt")
    Traceback (most recent call last):
    ...
    cnnviz.errors.CheckpointError: The checkpoint 'run.pt' holds NaN or infinite values in 1 tensor ('w'): ...

    Raises:
        CheckpointError: naming the first few such tensors: the training run that saved them had diverged,
            and a model with them computes NaN everywhere (no view would show anything).
    """
    broken = [key for key, tensor in state.items() if tensor.is_floating_point() and not _finite(tensor)]
    if broken:
        raise CheckpointError(
            f"The checkpoint {quoted(filename)} holds NaN or infinite values in {plural(len(broken), 'tensor')} "
            f"({_names(broken)}): the training run that saved it had diverged, and a model with them computes "
            "nothing but NaN. Upload a checkpoint saved before that."
        )


def _finite(tensor: torch.Tensor) -> bool:
    """True when every value is finite. A finite sum proves it without allocating; an infinite one may be
    an overflow of large finite values, so then each value is checked."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


class MetaTensorsLeft(RuntimeError):
    """The model held a parameter or buffer its state dict does not list, left on the meta device by a
    skeleton build: build the model for real and load again."""


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[int, tuple[str, ...]]:
    """Put a fitted state dict's tensors into ``model`` (strictly, by assignment: parameters may be on
    the meta device beforehand and nothing is copied twice). Each tensor is copied once, in the dtype of
    the model's own (a float16 checkpoint becomes float32), so the model owns its memory and no longer
    depends on the file the tensors were mapped from. Returns (tensors loaded, notes).

    >>> layer = torch.nn.Linear(2, 1)
    >>> load_weights(layer, {"weight": torch.ones(1, 2, dtype=torch.float16), "bias": torch.zeros(1)})
    (2, ('converted 1 float16 tensor to float32',))
    >>> layer.weight.dtype, layer.weight.tolist()
    (torch.float32, [[1.0, 1.0]])

    Raises:
        MetaTensorsLeft: a parameter or buffer is still on the meta device afterwards (the model held a
            tensor its state dict does not list); build the model for real and load again.
    """
    ready: dict[str, torch.Tensor] = {}
    converted: Counter[tuple[str, str]] = Counter()  # (from dtype, to dtype) -> tensors
    for key, reference in model.state_dict().items():
        tensor = state[key].detach()
        if tensor.dtype != reference.dtype:
            converted[_dtype_name(tensor.dtype), _dtype_name(reference.dtype)] += 1
        ready[key] = tensor.to(reference.dtype, copy=True, memory_format=torch.contiguous_format)
    model.load_state_dict(ready, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise MetaTensorsLeft(f"{len(left)} tensors of the model are still on the meta device, e.g. {left[0]!r}")
    notes = tuple(f"converted {plural(n, f'{old} tensor')} to {new}" for (old, new), n in converted.items())
    return len(ready), notes


_ALLOCATION_RE = re.compile(r"allocate (?:memory: you tried to allocate )?(\d+) bytes")


@contextlib.contextmanager
def allocation_errors(filename: str) -> Iterator[None]:
    """Within the block, running out of memory (``MemoryError``, torch's "DefaultCPUAllocator: can't
    allocate memory" from alloc_cpu.cpp, CUDA's out-of-memory) raises a sentence, never the allocator's
    message.

    >>> with allocation_errors("big.pt"):
    ...     raise MemoryError()
    Traceback (most recent call last):
    ...
    cnnviz.errors.CheckpointError: The server does not have enough free memory to load the checkpoint 'big.pt' now. ...
    """
    try:
        yield
    except Exception as e:
        if not is_allocation_failure(e):
            raise
        found = _ALLOCATION_RE.search(str(e))
        needed = f" (one allocation of {_megabytes(int(found.group(1)))} failed)" if found else ""
        raise CheckpointError(
            f"The server does not have enough free memory to load the checkpoint {quoted(filename)} now{needed}. "
            "Try again later, or load a smaller model."
        ) from e


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
                f"The labels file has {plural(len(labels), 'line')} but the checkpoint has "
                f"{plural(num_classes, 'class', 'classes')}: give one label per class, in class order."
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
