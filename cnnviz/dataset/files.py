"""An image collection on disk: which files are its images, their labels, their digests; and a user's zip
turned into such a folder without trusting anything the zip says.

**A folder** (:func:`list_collection`). Candidates are the regular files whose suffix is an image suffix
(:data:`IMAGE_SUFFIXES`, any case); nothing is decoded here (the engine decodes each image with
:func:`cnnviz.preprocess.open_image`, which refuses what is not really an image). Hidden files and folders
(a name starting with ".") and ``__MACOSX`` are ignored; every other file that is not a candidate is listed
as :class:`Skipped` with the reason. Links are never followed out of the folder: a link to a file is a
candidate only when its real path lies inside the folder, and links to folders are not followed at all (no
loops, no escape). Labels follow torchvision's ``ImageFolder``: when no candidate lies directly in the folder,
each top-level sub-folder is a class, and its name is the label of every image below it, however deep;
otherwise the collection is unlabelled.

**A zip** (:func:`extract_zip`) is checked entry by entry from its central directory *before anything is
written*, and refused whole (:class:`~cnnviz.errors.CollectionError`) when any entry breaks a rule:

- its name is absolute (``/x.png``), has a drive letter (``C:x.png``), a ``..`` component, a backslash (a
  Windows separator that could hide a ``..``) or a NUL character: it could land outside the folder;
- it is a symbolic link or another special file (unix mode in ``external_attr >> 16``): only files and folders;
- it is encrypted, or compressed with a method Python's ``zipfile`` cannot read;
- its path appears twice;
- more than ``ZipLimits.max_entries`` entries (20,000), counted from the end-of-central-directory record
  before ``zipfile`` parses the directory (which holds every entry in memory) and again after;
- the declared uncompressed sizes of all entries add up to more than ``ZipLimits.max_total_bytes`` (2 GB);
- an entry over 1 MB unpacks to more than ``ZipLimits.max_ratio`` (100) times its compressed size (the mark
  of a zip bomb: photos compress little);
- an image entry is larger than ``ZipLimits.max_entry_bytes`` (:data:`cnnviz.preprocess.MAX_BYTES`, 20 MB:
  the per-image limit of uploads, which the engine would refuse anyway).

Then only image entries are extracted (outside hidden folders and ``__MACOSX``; the rest would be skipped
anyway), each streamed with a hard cap at its declared size: an entry that gives more, or less, or fails its
CRC, aborts the extraction and everything written is removed. The zip file's own size is the caller's limit
(the upload route's).
"""
from __future__ import annotations

import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ..errors import CollectionError, plural, quoted
from ..preprocess import ACCEPTED, MAX_BYTES

try:  # zipfile reads LZMA entries only where Python was built with lzma
    from lzma import LZMAError
except ImportError:  # pragma: no cover - a Python without lzma
    LZMAError = zlib.error

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"__MACOSX"})  # besides hidden names: the resource forks macOS adds to zips
CHUNK = 2**20  # bytes read at a time, hashing and extracting
RATIO_FLOOR = 2**20  # entries up to this size may compress as well as they like (a blank image does)
READABLE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_DAMAGED = (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, NotImplementedError, zlib.error, LZMAError)


# --------------------------------------------------------------------------------------------------
# A folder
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFile:
    """A candidate image: ``path`` relative to the collection's folder (POSIX separators), its ``size`` in
    bytes and ``mtime_ns`` (what tells a changed file without reading it), ``label`` (None: unlabelled)."""

    path: str
    size: int
    mtime_ns: int
    label: str | None


@dataclass(frozen=True)
class Skipped:
    """A file seen but not a candidate: ``path`` as in :class:`ImageFile`, ``reason`` a sentence that follows
    it (shown as ``f"{path}: {reason}"``)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Listing:
    """A collection: ``root`` (the folder, absolute and resolved), ``files`` (by path, code-point order),
    ``labels`` (the sorted class names; () when unlabelled), ``skipped`` (by path)."""

    root: Path
    files: tuple[ImageFile, ...]
    labels: tuple[str, ...]
    skipped: tuple[Skipped, ...]


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with an image suffix (any case): what makes a file a candidate.

    >>> is_image_name("cats/Tom.JPG"), is_image_name("notes.txt")
    (True, False)
    """
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def is_ignored_name(name: str) -> bool:
    """True for names a listing passes over silently: hidden ones and ``__MACOSX``."""
    return name.startswith(".") or name in IGNORED_NAMES


def list_collection(root: str | os.PathLike) -> Listing:
    """The images of the folder ``root`` (recursively), their labels, and what was skipped; see the module.

    Raises:
        CollectionError: ``root`` is not a folder, or holds no candidate image: there is nothing to run.

    >>> listing = list_collection("examples")
    >>> [f.path for f in listing.files][:3], listing.labels
    (['astronaut.png', 'cat.png', 'coffee.png'], ())
    """
    folder = Path(root)
    name = quoted(folder.name or str(folder))
    if not folder.exists():
        raise CollectionError(f"There is no folder {name}. Give a folder of images ({ACCEPTED}).")
    if not folder.is_dir():
        raise CollectionError(f"{name} is a file, not a folder. Give the folder that holds the images ({ACCEPTED}).")
    real_root = Path(os.path.realpath(folder))
    found: list[tuple[str, os.stat_result]] = []
    skipped: list[Skipped] = []
    for path, entry in _walk(real_root, skipped):
        result = _candidate(real_root, path, entry)
        if isinstance(result, str):
            skipped.append(Skipped(path, result))
        else:
            found.append((path, result))
    if not found:
        raise CollectionError(f"The folder {name} holds no images ({ACCEPTED}).{_skipped_text(skipped)} "
                              "Put the images in it, directly or in one sub-folder per class.")
    labelled = all("/" in path for path, _ in found)
    files = sorted((ImageFile(path, st.st_size, st.st_mtime_ns, path.split("/", 1)[0] if labelled else None)
                    for path, st in found), key=lambda f: f.path)
    labels = tuple(sorted({f.label for f in files if f.label is not None}))
    return Listing(real_root, tuple(files), labels, tuple(sorted(skipped, key=lambda s: s.path)))


def _walk(root: Path, skipped: list[Skipped]) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative POSIX path, entry) of every entry under ``root`` that is not a real folder, depth first in
    name order; folders that cannot be read, or whose names are not UTF-8, are added to ``skipped``."""
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(_printable(prefix.rstrip("/")), f"a folder that could not be read ({e.strerror})."))
            continue
        for entry in reversed(entries):  # the stack pops the first name first
            if is_ignored_name(entry.name):
                continue
            path = prefix + entry.name
            if not _is_utf8(entry.name):
                skipped.append(Skipped(_printable(path), "a name that is not valid UTF-8: rename it."))
            elif entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, path + "/"))
            else:
                yield path, entry


def _candidate(root: Path, path: str, entry: os.DirEntry) -> os.stat_result | str:
    """The file's stat when ``entry`` is a candidate image, else the reason it is not (a sentence)."""
    if entry.is_symlink():
        return _link(root, entry)
    if not entry.is_file(follow_symlinks=False):
        return "not a regular file (a pipe, socket or device)."
    if not is_image_name(path):
        return _not_an_image(path)
    try:
        return entry.stat(follow_symlinks=False)
    except OSError as e:
        return f"a file that could not be read ({e.strerror})."


def _link(root: Path, entry: os.DirEntry) -> os.stat_result | str:
    """A link is a candidate only as a link to a regular image file inside ``root``."""
    real = os.path.realpath(entry.path)
    if os.path.isdir(real):
        return "a link to a folder: links to folders are not followed."
    if os.path.commonpath([root, real]) != str(root):
        return "a link to a file outside the collection's folder: links are followed only within it."
    try:
        st = os.stat(real)
    except OSError:
        return "a link that leads nowhere (its target is missing)."
    if not stat.S_ISREG(st.st_mode):
        return "a link to something that is not a regular file."
    return st if is_image_name(entry.name) else _not_an_image(entry.name)


def _not_an_image(path: str) -> str:
    suffix = os.path.splitext(path)[1]
    kind = f"({suffix})" if suffix else "(no suffix)"
    return f"not an image file {kind}: only {ACCEPTED} files ({', '.join(sorted(IMAGE_SUFFIXES))}) are read."


def _skipped_text(skipped: list[Skipped]) -> str:
    if not skipped:
        return ""
    first = min(skipped, key=lambda s: s.path)
    return f" {plural(len(skipped), 'file was', 'files were')} skipped; {quoted(first.path)}: {first.reason}"


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os gives undecodable bytes as lone surrogates
        return False
    return True


def _printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------------------


def file_digest(path: str | os.PathLike) -> str:
    """XXH3-128 (unseeded: the same in every process and machine) of the file's bytes, 32 hex digits; what
    tells an image that changed from one that only moved or was touched."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def collection_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """XXH3-128 hex of a collection's (relative path, file digest) pairs, whatever their order: it changes
    when any image is added, removed, renamed or changed. Each string is length-prefixed, so no two different
    sets of pairs hash the same text.

    >>> collection_digest([("a.png", "00"), ("b.png", "11")]) == collection_digest([("b.png", "11"), ("a.png", "00")])
    True
    """
    digest = xxhash.xxh3_128()
    for path, file in sorted(pairs):
        for text in (path, file):
            data = os.fsencode(text)
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# A zip
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipLimits:
    """What :func:`extract_zip` accepts (see the module): entries, the declared total unpacked, the unpacked /
    compressed ratio of entries over 1 MB, and the bytes of one image."""

    max_entries: int = 20_000
    max_total_bytes: int = 2 * 2**30
    max_ratio: float = 100.0
    max_entry_bytes: int = MAX_BYTES


def extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike, limits: ZipLimits = ZipLimits()) -> Path:
    """Extract the image entries of the zip ``zip_path`` into the folder ``dest`` (created; it must be empty
    or missing) and return ``dest``, ready for :func:`list_collection`.

    Raises:
        CollectionError: ``dest`` is not empty; the file is not a readable zip; an entry breaks a rule of the
            module's (nothing is written); an entry turns out damaged while extracting (what was written is
            removed): a zip is used whole or not at all.
    """
    target = Path(dest)
    if target.exists() and not target.is_dir():
        raise CollectionError(f"{quoted(target.name)} is a file, not a folder to extract the zip into. Give an empty or new folder.")
    if target.exists() and any(target.iterdir()):
        raise CollectionError(f"The folder {quoted(target.name)} to extract the zip into is not empty. Give an empty or new folder.")
    name = quoted(os.path.basename(os.fspath(zip_path)))
    declared = _declared_entries(zip_path, name)
    if declared is not None and declared > limits.max_entries:
        raise _too_many(declared, limits)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (*_DAMAGED, struct.error) as e:
        raise CollectionError(f"The file {name} is not a zip archive, or it is damaged ({e}). "
                              f"Give a .zip of a folder of images ({ACCEPTED}).") from e
    with archive:
        wanted = check_entries(archive.infolist(), limits)
        created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        try:
            for info in wanted:
                _extract_entry(archive, info, target)
        except BaseException:
            _remove_contents(target, created)
            raise
    return target


def check_entries(infos: list[zipfile.ZipInfo], limits: ZipLimits = ZipLimits()) -> list[zipfile.ZipInfo]:
    """The image entries to extract, once every entry passed the module's rules.

    Raises:
        CollectionError: the first rule broken, naming the entry and the limit.
    """
    if len(infos) > limits.max_entries:
        raise _too_many(len(infos), limits)
    seen: set[str] = set()
    total = 0
    wanted = []
    for info in infos:
        parts = _check_entry(info, limits)
        key = "/".join(parts)
        if key in seen:
            raise _refuse(info, "appears twice in the zip; each path may appear once")
        seen.add(key)
        total += info.file_size
        if parts and not info.is_dir() and is_image_name(parts[-1]) and not any(map(is_ignored_name, parts)):
            wanted.append(info)
    if total > limits.max_total_bytes:
        raise CollectionError(f"The zip's files add up to {_size(total)} unpacked, more than the "
                              f"{_size(limits.max_total_bytes)} this app accepts. Zip fewer images. Nothing was extracted.")
    return wanted


def _check_entry(info: zipfile.ZipInfo, limits: ZipLimits) -> list[str]:
    """The entry's path components (without empty and "." ones) once it passed every per-entry rule."""
    name = info.orig_filename
    if "\0" in name or "\0" in info.filename:
        raise _refuse(info, "has a NUL character in its name")
    if "\\" in name:
        raise _refuse(info, "has a backslash in its name (a Windows separator that could climb out of the folder)")
    if name.startswith("/"):
        raise _refuse(info, "has an absolute path; entries must be paths inside the zip, like 'cats/1.png'")
    if len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        raise _refuse(info, "has a drive letter; entries must be paths inside the zip, like 'cats/1.png'")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(info, "has a '..' component, which would climb out of the folder")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise _refuse(info, "is a symbolic link; a collection's zip may hold only files and folders")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(info, "is a special file (a device, pipe or socket); a collection's zip may hold only files and folders")
    if info.flag_bits & 0x1:
        raise _refuse(info, "is encrypted; this app cannot read password-protected zips. Zip the images without a password")
    if info.compress_type not in READABLE_METHODS:
        raise _refuse(info, f"is compressed with a method this app cannot read (method {info.compress_type}); use Deflate or none")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_FLOOR and ratio > limits.max_ratio:
        raise _refuse(info, f"unpacks to {ratio:,.0f} times its compressed size, more than the {limits.max_ratio:g} "
                            f"this app accepts for files over {_size(RATIO_FLOOR)} (the mark of a zip bomb)")
    if is_image_name(name) and info.file_size > limits.max_entry_bytes:
        raise _refuse(info, f"is {_size(info.file_size)}, more than the {_size(limits.max_entry_bytes)} this app accepts for one image")
    return parts


def _extract_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> None:
    """Stream one checked entry to its place under ``root``, never past its declared size."""
    parts = [part for part in info.orig_filename.split("/") if part not in ("", ".")]
    path = root.joinpath(*parts)
    if os.path.commonpath([os.path.realpath(root), os.path.realpath(path.parent)]) != os.path.realpath(root):
        raise _refuse(info, "would land outside the folder")  # unreachable after the name checks: a second lock
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = _copy(archive, info, path)
    except CollectionError:
        raise
    except _DAMAGED as e:  # an errno is the disk's (full, read-only); the rest is the zip's
        raise _refuse(info, f"could not be written ({e.strerror})" if isinstance(e, OSError) and e.errno
                      else f"is damaged ({e})") from e
    if written != info.file_size:
        raise _refuse(info, f"gives {written:,} bytes, not the {info.file_size:,} it declares; it is damaged")


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> int:
    """Stream the entry into a new file at ``path``; the bytes written, never more than declared."""
    written = 0
    with archive.open(info) as source, open(path, "xb") as out:
        while chunk := source.read(min(CHUNK, info.file_size - written + 1)):
            written += len(chunk)
            if written > info.file_size:
                raise _refuse(info, f"gives more than the {info.file_size:,} bytes it declares; it is damaged or forged")
            out.write(chunk)
    return written


def _declared_entries(zip_path: str | os.PathLike, name: str) -> int | None:
    """The entry count of the end-of-central-directory record (zip64's when there is one), read from the
    file's tail; None when there is no such record (``zipfile`` then says the file is not a zip)."""
    try:
        with open(zip_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (22 + 0xFFFF + 20 + 56)))  # EOCD, its longest comment, zip64 locator and record
            tail = f.read()
    except OSError as e:
        raise CollectionError(f"The zip {name} could not be read ({e.strerror}). Give a .zip of a folder of images.") from e
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) - end < 22:
        return None
    count = struct.unpack_from("<H", tail, end + 10)[0]
    locator, record = end - 20, end - 20 - 56
    if record >= 0 and tail[locator:locator + 4] == b"PK\x06\x07" and tail[record:record + 4] == b"PK\x06\x06":
        count = struct.unpack_from("<Q", tail, record + 32)[0]
    return count


def _remove_contents(root: Path, created: bool) -> None:
    """Undo an extraction: ``root`` was empty or missing before it."""
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    if created:
        root.rmdir()


def _refuse(info: zipfile.ZipInfo, what: str) -> CollectionError:
    return CollectionError(f"The zip entry {quoted(info.filename)} {what}. Nothing was extracted.")


def _too_many(count: int, limits: ZipLimits) -> CollectionError:
    return CollectionError(f"The zip holds {count:,} entries, more than the {limits.max_entries:,} this app accepts. "
                           "Zip fewer files, or split the collection. Nothing was extracted.")


def _size(nbytes: float) -> str:
    """``"2 GB"``, ``"20 MB"``, ``"1.5 MB"``, ``"64 KB"``, ``"300 bytes"``: a byte count for a sentence."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} bytes"
