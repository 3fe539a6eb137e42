"""cnnviz.dataset.files: which files of a folder are a collection's images and their labels, their digests, and
a user's zip turned into a folder only when every entry is safe (real files in tmp_path, real PNG/JPEG bytes)."""
from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import xxhash
from PIL import Image

from cnnviz.dataset.files import (
    ImageFile,
    ZipLimits,
    check_entries,
    collection_digest,
    extract_zip,
    file_digest,
    list_collection,
)
from cnnviz.errors import CnnvizError, CollectionError
from cnnviz.preprocess import open_image
from tests.fixtures.collections import COUNTS, SCENES, make_collection


def image_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def paths(listing) -> list[str]:
    return [f.path for f in listing.files]


PNG, JPEG = image_bytes(), image_bytes((10, 120, 240), fmt="JPEG")


# --------------------------------------------------------------------------------------------------
# A folder
# --------------------------------------------------------------------------------------------------


def test_an_imagefolder_layout_labels_every_image_by_its_top_folder_however_deep(tmp_path):
    write(tmp_path, {"cats/tom.png": PNG, "cats/kittens/deep/1.JPG": JPEG, "dogs/rex.jpeg": JPEG,
                     "README.txt": b"about", "empty_class/notes.txt": b"-"})
    listing = list_collection(tmp_path)
    assert listing.root == tmp_path.resolve()
    assert listing.labels == ("cats", "dogs")  # a folder without images is no class
    assert [(f.path, f.label) for f in listing.files] == [
        ("cats/kittens/deep/1.JPG", "cats"), ("cats/tom.png", "cats"), ("dogs/rex.jpeg", "dogs")]
    assert [s.path for s in listing.skipped] == ["README.txt", "empty_class/notes.txt"]


def test_an_image_directly_in_the_folder_makes_the_whole_collection_unlabelled(tmp_path):
    write(tmp_path, {"loose.webp": PNG, "cats/tom.png": PNG, "dogs/rex.gif": PNG})
    listing = list_collection(tmp_path)
    assert listing.labels == ()
    assert {f.label for f in listing.files} == {None}
    assert paths(listing) == ["cats/tom.png", "dogs/rex.gif", "loose.webp"]


def test_one_wrapping_folder_is_one_class_as_in_torchvision(tmp_path):
    write(tmp_path, {"pets/cats/tom.png": PNG, "pets/dogs/rex.png": PNG})
    listing = list_collection(tmp_path)
    assert listing.labels == ("pets",) and {f.label for f in listing.files} == {"pets"}


def test_files_come_in_code_point_order_of_their_paths_every_time(tmp_path):
    names = ["a/b.png", "a-c.png", "B.png", "a.png", "é.png", "Z/z.tif", "a/B.bmp"]
    write(tmp_path, dict.fromkeys(names, PNG))
    first, second = list_collection(tmp_path), list_collection(tmp_path)
    assert paths(first) == sorted(names) == ["B.png", "Z/z.tif", "a-c.png", "a.png", "a/B.bmp", "a/b.png", "é.png"]
    assert first == second


def test_image_file_carries_size_and_mtime_for_spotting_changes(tmp_path):
    write(tmp_path, {"x.png": PNG})
    os.utime(tmp_path / "x.png", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    assert list_collection(tmp_path).files == (ImageFile("x.png", len(PNG), 1_600_000_000_123_456_789, None),)


def test_non_images_are_skipped_with_a_reason_and_hidden_files_silently(tmp_path):
    write(tmp_path, {"a.png": PNG, "notes.txt": b"hi", "Makefile": b"all:", "photo.PNG.bak": PNG, ".hidden.png": PNG,
                     ".git/objects/x.png": PNG, "__MACOSX/._a.png": b"\0", "sub/.DS_Store": b"\0"})
    listing = list_collection(tmp_path)
    assert paths(listing) == ["a.png"]
    reasons = {s.path: s.reason for s in listing.skipped}
    assert set(reasons) == {"Makefile", "notes.txt", "photo.PNG.bak"}
    assert reasons["notes.txt"].startswith("not an image file (.txt): only PNG, JPEG, WebP, GIF, BMP or TIFF files")
    assert reasons["Makefile"].startswith("not an image file (no suffix)")
    assert ".png" in reasons["notes.txt"] and ".tiff" in reasons["notes.txt"]  # what would have been read


def test_a_link_out_of_the_folder_is_skipped_and_one_inside_is_an_image(tmp_path):
    outside = write(tmp_path / "outside", {"secret.png": PNG})
    root = write(tmp_path / "root", {"real.png": PNG})
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "alias.png").symlink_to(root / "real.png")
    (root / "broken.png").symlink_to(root / "missing.png")
    (root / "relative.png").symlink_to("../outside/secret.png")
    listing = list_collection(root)
    assert paths(listing) == ["alias.png", "real.png"]
    assert listing.files[0].size == len(PNG)
    reasons = {s.path: s.reason for s in listing.skipped}
    assert "outside the collection's folder" in reasons["escape.png"]
    assert "outside the collection's folder" in reasons["relative.png"]
    assert "leads nowhere" in reasons["broken.png"]


def test_a_link_to_a_folder_is_not_followed_inside_or_outside(tmp_path):
    outside = write(tmp_path / "outside", {"secret.png": PNG})
    root = write(tmp_path / "root", {"cats/tom.png": PNG})
    (root / "more").symlink_to(outside, target_is_directory=True)
    (root / "cats" / "loop").symlink_to(root, target_is_directory=True)
    listing = list_collection(root)
    assert paths(listing) == ["cats/tom.png"]
    reasons = {s.path: s.reason for s in listing.skipped}
    assert reasons == {"more": "a link to a folder: links to folders are not followed.",
                       "cats/loop": "a link to a folder: links to folders are not followed."}


def test_a_root_given_as_a_link_is_listed_from_its_real_folder(tmp_path):
    real = write(tmp_path / "real", {"a.png": PNG})
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    listing = list_collection(tmp_path / "alias")
    assert listing.root == real.resolve() and paths(listing) == ["a.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_is_skipped_as_not_a_regular_file(tmp_path):
    write(tmp_path, {"a.png": PNG})
    os.mkfifo(tmp_path / "pipe.png")
    listing = list_collection(tmp_path)
    assert paths(listing) == ["a.png"]
    assert listing.skipped[0].path == "pipe.png" and "not a regular file" in listing.skipped[0].reason


def test_a_name_that_is_not_utf8_is_skipped_with_a_readable_path(tmp_path):
    write(tmp_path, {"a.png": PNG})
    try:
        with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), "wb") as f:
            f.write(PNG)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    listing = list_collection(tmp_path)
    assert paths(listing) == ["a.png"]
    assert listing.skipped[0].path == "caf\ufffd.png" and "not valid UTF-8" in listing.skipped[0].reason


def test_an_empty_folder_is_refused_with_the_formats_it_could_hold(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(CollectionError) as caught:
        list_collection(tmp_path / "photos")
    assert str(caught.value).startswith("The folder 'photos' holds no images (PNG, JPEG, WebP, GIF, BMP or TIFF).")
    assert isinstance(caught.value, CnnvizError)


def test_a_folder_of_only_other_files_says_what_was_skipped(tmp_path):
    write(tmp_path / "docs", {"b.txt": b"", "a.csv": b"", ".hidden.png": PNG})
    with pytest.raises(CollectionError) as caught:
        list_collection(tmp_path / "docs")
    message = str(caught.value)
    assert "holds no images" in message and "2 files were skipped; 'a.csv': not an image file (.csv)" in message


def test_a_file_or_a_missing_path_given_as_the_folder_is_refused(tmp_path):
    write(tmp_path, {"photo.png": PNG})
    with pytest.raises(CollectionError, match=r"^'photo.png' is a file, not a folder\. Give the folder that holds the images"):
        list_collection(tmp_path / "photo.png")
    with pytest.raises(CollectionError, match=r"^There is no folder 'nowhere'\."):
        list_collection(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------------------


def test_the_same_bytes_give_the_same_digest_wherever_they_lie(tmp_path):
    write(tmp_path, {"a.png": PNG, "copy/b.png": PNG, "c.jpg": JPEG})
    assert file_digest(tmp_path / "a.png") == file_digest(tmp_path / "copy" / "b.png") == xxhash.xxh3_128(PNG).hexdigest()
    assert file_digest(tmp_path / "c.jpg") != file_digest(tmp_path / "a.png")
    assert len(file_digest(tmp_path / "a.png")) == 32


def test_a_file_larger_than_one_chunk_is_hashed_whole(tmp_path):
    data = os.urandom(3 * 2**20 + 5)
    (tmp_path / "big.bin").write_bytes(data)
    assert file_digest(tmp_path / "big.bin") == xxhash.xxh3_128(data).hexdigest()


def test_the_collection_digest_ignores_order_and_sees_one_changed_byte(tmp_path):
    root = write(tmp_path, {"cats/a.png": PNG, "cats/b.png": image_bytes((1, 2, 3)), "dogs/c.jpg": JPEG})

    def digest_of(root: Path, reverse: bool = False) -> str:
        pairs = [(f.path, file_digest(root / f.path)) for f in list_collection(root).files]
        return collection_digest(reversed(pairs) if reverse else pairs)

    before = digest_of(root)
    assert before == digest_of(root, reverse=True)
    data = bytearray((root / "cats/b.png").read_bytes())
    data[-20] ^= 1
    (root / "cats/b.png").write_bytes(bytes(data))
    changed = digest_of(root)
    assert changed != before
    (root / "cats/b.png").rename(root / "cats/b2.png")
    assert digest_of(root) not in (before, changed)  # a rename changes it too


def test_the_collection_digest_cannot_be_fooled_by_moving_text_between_path_and_digest():
    assert collection_digest([("ab", "c")]) != collection_digest([("a", "bc")])
    assert collection_digest([]) == collection_digest(iter([]))


# --------------------------------------------------------------------------------------------------
# Zips: hostile ones are refused whole, before anything is written
# --------------------------------------------------------------------------------------------------


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def patch(data: bytes, signature: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with the field at ``offset`` of the last header starting with ``signature`` set to ``value``."""
    at = data.rfind(signature)
    assert at >= 0
    patched = bytearray(data)
    struct.pack_into(fmt, patched, at + offset, value)
    return bytes(patched)


def refused(zip_path: Path, dest: Path, limits: ZipLimits = ZipLimits()) -> str:
    """The sentence a refused zip gets; nothing may be left under ``dest`` (not even the folder)."""
    with pytest.raises(CollectionError) as caught:
        extract_zip(zip_path, dest, limits)
    assert not dest.exists(), sorted(dest.rglob("*"))
    return str(caught.value)


@pytest.mark.parametrize(("name", "said"), [
    ("../evil.png", "has a '..' component, which would climb out of the folder"),
    ("cats/../../evil.png", "has a '..' component"),
    ("/abs.png", "has an absolute path"),
    ("C:evil.png", "has a drive letter"),
    ("c:/evil.png", "has a drive letter"),
    ("cats\\..\\..\\evil.png", "has a backslash in its name"),
])
def test_an_entry_that_could_land_outside_the_folder_refuses_the_zip(tmp_path, name, said):
    archive = make_zip(tmp_path / "in.zip", [("cats/good.png", PNG), (name, PNG)])
    message = refused(archive, tmp_path / "out" / "dest")
    assert message.startswith(f"The zip entry {name!r} {said}") and message.endswith("Nothing was extracted.")
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out" / "evil.png").exists()


@pytest.mark.parametrize(("kind", "said"), [
    (stat.S_IFLNK, "is a symbolic link; a collection's zip may hold only files and folders"),
    (stat.S_IFIFO, "is a special file"),
    (stat.S_IFCHR, "is a special file"),
])
def test_a_link_or_special_entry_refuses_the_zip(tmp_path, kind, said):
    link = zipfile.ZipInfo("cats/passwd.png")
    link.create_system = 3  # unix
    link.external_attr = (kind | 0o777) << 16
    archive = make_zip(tmp_path / "in.zip", [("cats/good.png", PNG), (link, b"/etc/passwd")])
    assert refused(archive, tmp_path / "dest").startswith(f"The zip entry 'cats/passwd.png' {said}")


def test_too_many_entries_are_refused_from_the_end_record_before_parsing(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "many.zip", [(f"{i}.txt", b"") for i in range(20_001)], method=zipfile.ZIP_STORED)
    monkeypatch.setattr(zipfile, "ZipFile", None)  # parsing the directory would fail: it must not happen
    message = refused(archive, tmp_path / "dest")
    assert message.startswith("The zip holds 20,001 entries, more than the 20,000 this app accepts.")


def test_the_entry_count_of_a_zip64_end_record_is_the_one_read(tmp_path, monkeypatch):
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 3)  # zipfile writes zip64 end records past this count
    archive = make_zip(tmp_path / "z64.zip", [(f"{i}.png", PNG) for i in range(9)])
    monkeypatch.undo()
    assert b"PK\x06\x06" in archive.read_bytes() and b"PK\x06\x07" in archive.read_bytes()
    assert "holds 9 entries, more than the 8 this app accepts" in refused(archive, tmp_path / "dest", ZipLimits(max_entries=8))
    assert len(list_collection(extract_zip(archive, tmp_path / "ok", ZipLimits(max_entries=9))).files) == 9


def test_the_entry_count_is_checked_again_on_the_parsed_directory():
    infos = [zipfile.ZipInfo(f"{i}.png") for i in range(3)]
    with pytest.raises(CollectionError, match="holds 3 entries, more than the 2 this app accepts"):
        check_entries(infos, ZipLimits(max_entries=2))


def test_a_zip_bomb_is_refused_by_its_compression_ratio(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", [("cats/good.png", PNG), ("cats/zeros.png", bytes(8 * 2**20))])
    message = refused(archive, tmp_path / "dest")
    assert message.startswith("The zip entry 'cats/zeros.png' unpacks to ")
    assert "times its compressed size, more than the 100 this app accepts for files over 1 MB" in message


def test_small_files_may_compress_as_well_as_they_like(tmp_path):
    archive = make_zip(tmp_path / "blank.zip", [("blank.bmp", image_bytes((0, 0, 0), (300, 300), "BMP"))])
    assert paths(list_collection(extract_zip(archive, tmp_path / "dest"))) == ["blank.bmp"]


def test_an_image_larger_than_the_upload_limit_is_refused(tmp_path):
    archive = make_zip(tmp_path / "big.zip", [("big.tif", os.urandom(300_000))], method=zipfile.ZIP_STORED)
    message = refused(archive, tmp_path / "dest", ZipLimits(max_entry_bytes=100 * 2**10))
    assert message.startswith("The zip entry 'big.tif' is 293 KB, more than the 100 KB this app accepts for one image.")
    assert ZipLimits().max_entry_bytes == 20 * 2**20  # the upload limit, by default


def test_a_declared_total_over_the_limit_is_refused(tmp_path):
    archive = make_zip(tmp_path / "total.zip", [("a.png", os.urandom(60_000)), ("notes.txt", os.urandom(60_000))])
    message = refused(archive, tmp_path / "dest", ZipLimits(max_total_bytes=100_000))
    assert message.startswith("The zip's files add up to 117 KB unpacked, more than the 97.7 KB this app accepts.")


def test_an_encrypted_entry_is_refused(tmp_path):
    data = make_zip(tmp_path / "plain.zip", [("secret.png", PNG)]).read_bytes()
    data = patch(patch(data, b"PK\x03\x04", 6, "<H", 0x1), b"PK\x01\x02", 8, "<H", 0x1)
    (tmp_path / "enc.zip").write_bytes(data)
    assert refused(tmp_path / "enc.zip", tmp_path / "dest").startswith(
        "The zip entry 'secret.png' is encrypted; this app cannot read password-protected zips.")


def test_an_unknown_compression_method_is_refused(tmp_path):
    data = make_zip(tmp_path / "plain.zip", [("odd.png", PNG)]).read_bytes()
    data = patch(patch(data, b"PK\x03\x04", 8, "<H", 97), b"PK\x01\x02", 10, "<H", 97)
    (tmp_path / "odd.zip").write_bytes(data)
    assert "is compressed with a method this app cannot read (method 97)" in refused(tmp_path / "odd.zip", tmp_path / "dest")


def test_a_path_twice_is_refused(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = make_zip(tmp_path / "twice.zip", [("a.png", PNG), ("a.png", JPEG)])
    assert refused(archive, tmp_path / "dest").startswith("The zip entry 'a.png' appears twice in the zip")


def test_an_entry_that_gives_other_bytes_than_it_declares_is_undone(tmp_path):
    """Sizes are declared twice (local header, central directory): both lie here. The good entry before it
    has been written by the time the lie shows: it is removed with the folder."""
    data = make_zip(tmp_path / "honest.zip", [("cats/good.png", PNG), ("cats/liar.png", image_bytes(size=(64, 64)))]).read_bytes()
    smaller = patch(patch(data, b"PK\x03\x04", 22, "<I", 40), b"PK\x01\x02", 24, "<I", 40)
    (tmp_path / "smaller.zip").write_bytes(smaller)
    message = refused(tmp_path / "smaller.zip", tmp_path / "dest")
    assert message.startswith("The zip entry 'cats/liar.png' is damaged (Bad CRC-32")

    stored = make_zip(tmp_path / "stored.zip", [("cats/good.png", PNG), ("cats/short.png", PNG)], zipfile.ZIP_STORED).read_bytes()
    larger = patch(patch(stored, b"PK\x03\x04", 22, "<I", len(PNG) + 1000), b"PK\x01\x02", 24, "<I", len(PNG) + 1000)
    (tmp_path / "larger.zip").write_bytes(larger)
    message = refused(tmp_path / "larger.zip", tmp_path / "dest")
    assert message.startswith(f"The zip entry 'cats/short.png' gives {len(PNG)} bytes, not the {len(PNG) + 1000:,} it declares")


def test_an_existing_empty_folder_is_emptied_again_but_kept_when_a_zip_fails(tmp_path):
    data = make_zip(tmp_path / "honest.zip", [("good.png", PNG), ("liar.png", image_bytes(size=(64, 64)))]).read_bytes()
    (tmp_path / "bad.zip").write_bytes(patch(patch(data, b"PK\x03\x04", 22, "<I", 40), b"PK\x01\x02", 24, "<I", 40))
    (tmp_path / "dest").mkdir()
    with pytest.raises(CollectionError, match="'liar.png' is damaged"):
        extract_zip(tmp_path / "bad.zip", tmp_path / "dest")
    assert (tmp_path / "dest").is_dir() and not any((tmp_path / "dest").iterdir())


@pytest.mark.parametrize("content", [b"just text, no zip", PNG, b"", None])
def test_a_file_that_is_not_a_zip_is_refused(tmp_path, content):
    path = tmp_path / "photos.zip"
    if content is None:  # a real zip cut in half
        content = make_zip(tmp_path / "whole.zip", [("a.png", PNG), ("b.png", JPEG)]).read_bytes()
        content = content[: len(content) // 2]
    path.write_bytes(content)
    message = refused(path, tmp_path / "dest")
    assert message.startswith("The file 'photos.zip' is not a zip archive, or it is damaged (")
    assert message.endswith("Give a .zip of a folder of images (PNG, JPEG, WebP, GIF, BMP or TIFF).")


def test_a_missing_zip_and_an_unusable_destination_are_refused(tmp_path):
    assert refused(tmp_path / "gone.zip", tmp_path / "dest").startswith("The zip 'gone.zip' could not be read (No such file")
    archive = make_zip(tmp_path / "in.zip", [("a.png", PNG)])
    write(tmp_path, {"full/x.txt": b"x", "a_file": b"x"})
    with pytest.raises(CollectionError, match="^The folder 'full' to extract the zip into is not empty"):
        extract_zip(archive, tmp_path / "full")
    with pytest.raises(CollectionError, match="^'a_file' is a file, not a folder to extract the zip into"):
        extract_zip(archive, tmp_path / "a_file")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["x.txt"]


def test_a_good_zip_extracts_its_images_only_and_lists_with_labels(tmp_path):
    entries = [("cats/", b""), ("cats/tom.png", PNG), ("cats/deep/kit.jpg", JPEG), ("./dogs/rex.png", image_bytes((0, 9, 0))),
               ("dogs/notes.txt", b"good dog"), ("__MACOSX/cats/._tom.png", b"\0\5"), ("cats/.DS_Store", b"\0"),
               (".hidden/x.png", PNG)]
    archive = make_zip(tmp_path / "pets.zip", entries)
    dest = extract_zip(archive, tmp_path / "new" / "pets")
    assert dest == tmp_path / "new" / "pets"
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "cats/deep/kit.jpg", "cats/tom.png", "dogs/rex.png"]
    listing = list_collection(dest)
    assert listing.labels == ("cats", "dogs") and listing.skipped == ()
    assert [(f.path, f.label) for f in listing.files] == [("cats/deep/kit.jpg", "cats"), ("cats/tom.png", "cats"), ("dogs/rex.png", "dogs")]
    assert (dest / "cats" / "tom.png").read_bytes() == PNG


def test_the_fixture_collection_survives_a_round_trip_through_a_zip(tmp_path):
    root = make_collection(tmp_path / "made", per_class=3)
    with zipfile.ZipFile(tmp_path / "made.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            archive.write(path, path.relative_to(root).as_posix())
    extracted = list_collection(extract_zip(tmp_path / "made.zip", tmp_path / "out"))
    original = list_collection(root)
    assert [(f.path, f.size, f.label) for f in extracted.files] == [(f.path, f.size, f.label) for f in original.files]
    digest = lambda listing: collection_digest((f.path, file_digest(listing.root / f.path)) for f in listing.files)
    assert digest(extracted) == digest(original)


# --------------------------------------------------------------------------------------------------
# The fixture collection
# --------------------------------------------------------------------------------------------------


def test_the_fixture_collection_has_the_classes_and_counts_it_documents(tmp_path):
    listing = list_collection(make_collection(tmp_path / "all"))
    assert listing.labels == ("faces", "not_faces", "scenes") and listing.skipped == ()
    assert Counter(f.label for f in listing.files) == COUNTS == {"faces": 100, "not_faces": 100, "scenes": 40}
    assert {os.path.splitext(f.path)[1] for f in listing.files if f.label == "scenes"} == {".jpg"}
    face = open_image(listing.root / "faces" / "face_000.png")
    assert face.size == (64, 64)
    assert max(open_image(listing.root / "scenes" / "hubble_deep_field_left.jpg").size) == 128


def test_the_fixture_collection_is_small_on_request_and_the_same_every_time(tmp_path):
    first = list_collection(make_collection(tmp_path / "one", per_class=2))
    second = list_collection(make_collection(tmp_path / "two", per_class=2))
    assert paths(first) == ["faces/face_000.png", "faces/face_001.png", "not_faces/not_face_000.png",
                            "not_faces/not_face_001.png", f"scenes/{SCENES[0]}.jpg", f"scenes/{SCENES[1]}.jpg"]
    digests = [collection_digest((f.path, file_digest(listing.root / f.path)) for f in listing.files)
               for listing in (first, second)]
    assert digests[0] == digests[1]
    with pytest.raises(ValueError, match="per_class must be"):
        make_collection(tmp_path / "none", per_class=0)
