"""Messy raw folders: each kind of bad file is rejected with its reason, odd modes become upright RGB, duplicates
and near duplicates never straddle two splits, and a photo under two classes is excluded."""

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageclf.core.errors import UserError
from imageclf.data.folders import find_files
from imageclf.data.manifest import read_manifest
from imageclf.data.splitting import NEAR_DUPLICATE_BITS, inspect_image, make_split
from tests.helpers import CLASS_COLOURS, CLASSES
from tests.test_data import warnings_in

SIDE = 74  # what split stores for data.image_size 64


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def photo(seed: int, colour: tuple[int, int, int] = (128, 128, 128), size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A smooth random picture: its perceptual hash differs from any other seed's, and survives resizing."""
    rng = np.random.default_rng(seed)
    pattern = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return Image.blend(pattern, Image.new("RGB", size, colour), 0.3)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` pixels and holds almost no data, like a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def half(content: bytes) -> bytes:
    """The first half of a file, as an interrupted download leaves it."""
    return content[: len(content) // 2]


def corrupt_jpeg() -> bytes:
    content = bytearray(encoded(photo(1, size=(200, 150)), "JPEG", quality=90))
    content[len(content) // 2 : len(content) // 2 + 200] = b"\xff" * 200
    return bytes(content)


BAD_FILES = {
    "empty.jpg": (b"", "empty file"),
    "truncated.jpg": (half(encoded(photo(2), "JPEG")), "truncated"),
    "truncated.png": (half(encoded(photo(3), "PNG")), "truncated"),
    "corrupt.jpg": (corrupt_jpeg(), "corrupt"),
    "text.jpg": (b"these are my holiday notes, not a photo\n", "not an image"),
    "iphone.jpg": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, "unsupported format"),
    "icon.png": (encoded(photo(4, size=(32, 32)), "ICO"), "unsupported format"),
    "bomb.png": (png_header(100_000, 100_000), "too many pixels"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_file_is_rejected_with_its_reason(tmp_path: Path, name: str) -> None:
    content, reason = BAD_FILES[name]
    (tmp_path / name).write_bytes(content)
    result = inspect_image((tmp_path / name, SIDE))
    assert (result.content, result.reason) == (None, reason)


def exif_rotated() -> bytes:
    landscape = Image.new("RGB", (40, 20), (255, 0, 0))
    landscape.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue; orientation 6 turns it to the top
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(landscape, "JPEG", exif=exif.tobytes(), quality=100)


def palette_png() -> bytes:
    image = Image.new("P", (40, 20), 0)
    image.putpalette([200, 10, 20] * 256)
    return encoded(image, "PNG")


@pytest.mark.parametrize(
    ("content", "size", "top", "bottom"),
    [
        (encoded(Image.new("CMYK", (40, 20), (0, 255, 255, 0)), "JPEG", quality=100), (40, 20), (255, 0, 0), None),
        (encoded(Image.fromarray(np.full((20, 40), 40000, dtype=np.uint16)), "PNG"), (40, 20), (156,) * 3, None),
        (encoded(Image.new("RGBA", (40, 20), (10, 20, 30, 0)), "PNG"), (40, 20), (255, 255, 255), None),
        (encoded(Image.new("L", (40, 20), 77), "PNG"), (40, 20), (77, 77, 77), None),
        (palette_png(), (40, 20), (200, 10, 20), None),
        (exif_rotated(), (20, 40), (0, 0, 255), (255, 0, 0)),
    ],
    ids=["cmyk", "16-bit", "rgba", "gray", "palette", "exif-rotated"],
)
def test_odd_images_are_stored_as_upright_rgb(
    tmp_path: Path,
    content: bytes,
    size: tuple[int, int],
    top: tuple[int, int, int],
    bottom: tuple[int, int, int] | None,
) -> None:
    (tmp_path / "photo.img").write_bytes(content)
    result = inspect_image((tmp_path / "photo.img", SIDE))
    assert result.reason == ""
    with Image.open(io.BytesIO(result.content)) as stored:
        assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", size)
        pixels = np.asarray(stored, dtype=int)
    assert np.abs(pixels[2, 2] - top).max() <= 8
    if bottom is not None:
        assert np.abs(pixels[-3, 2] - bottom).max() <= 8


def make_raw(root: Path, per_class: int = 10) -> Path:
    for index, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for number in range(per_class):
            photo(100 * index + number, CLASS_COLOURS[label]).save(root / label / f"{number}.jpg", quality=90)
    return root


def read_rejected(path: Path) -> dict[str, tuple[str, str]]:
    with path.open(newline="") as file:
        return {Path(row["path"]).name: (row["label"], row["reason"]) for row in csv.DictReader(file)}


def test_bad_files_are_listed_counted_and_warned_once_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = make_raw(tmp_path / "raw")
    for name, (content, _) in BAD_FILES.items():
        (raw / "dog" / name).write_bytes(content)
    (raw / "cat/clip.mov").write_bytes(b"\0\0\0\x14ftypqt  ")
    for hidden in (".DS_Store", "._0.jpg", "Thumbs.db", ".thumbnails/0.jpg"):
        (raw / "cat" / hidden).parent.mkdir(exist_ok=True)
        (raw / "cat" / hidden).write_bytes(b"\0\1")
    (raw / ".DS_Store").write_bytes(b"\0")
    (raw / "__MACOSX").mkdir()

    counts = make_split(raw, CLASSES, 64, 0.1, 0.1, 0, tmp_path / "split", tmp_path / "split/rejected.csv")

    expected = {name: ("dog", reason) for name, (_, reason) in BAD_FILES.items()} | {
        "clip.mov": ("cat", "unsupported format")
    }
    assert read_rejected(tmp_path / "split/rejected.csv") == expected
    assert counts["rejected"] == {
        "empty file": 1,
        "not an image": 1,
        "unsupported format": 3,
        "truncated": 2,
        "corrupt": 1,
        "too many pixels": 1,
        "label conflict": 0,
        "total": 9,
    }
    assert warnings_in(capsys.readouterr().err) == [
        "warning: rejected 9 file(s) (1 empty file, 1 not an image, 3 unsupported format, 2 truncated, 1 corrupt, "
        f"1 too many pixels): each is listed with its reason in {tmp_path}/split/rejected.csv"
    ]
    assert {name: split["total"] for name, split in counts["images"].items()} == {"train": 24, "val": 3, "test": 3}


def test_duplicates_and_near_duplicates_never_straddle_splits(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", per_class=12)
    cat, dog = raw / "cat", raw / "dog"
    (cat / "0 copy.jpg").write_bytes((cat / "0.jpg").read_bytes())  # exact duplicates, merged
    (cat / "sub").mkdir()
    (cat / "sub/0.jpg").write_bytes((cat / "0.jpg").read_bytes())
    for number in range(1, 5):  # near duplicates: resized, re-encoded, PNG and brighter copies of one photo
        with Image.open(cat / f"{number}.jpg") as original:
            original.resize((60, 45)).save(cat / f"{number}_small.jpg", quality=70)
            original.save(cat / f"{number}_copy.png")
            original.point(lambda value: min(255, value + 6)).save(cat / f"{number}_bright.jpg", quality=95)
    (dog / "5 from cat.jpg").write_bytes((cat / "5.jpg").read_bytes())  # exact copy under another class
    with Image.open(dog / "6.jpg") as original:  # a resized copy under another class
        original.resize((80, 60)).save(raw / "horse/6 from dog.jpg", quality=80)

    out = tmp_path / "split"
    counts = make_split(raw, CLASSES, 64, 0.2, 0.2, 3, out, out / "rejected.csv")

    assert counts["exact_duplicates"] == 2
    assert counts["near_duplicate_groups"] == 4 and counts["near_duplicate_images"] == 16
    assert counts["label_conflicts"] == counts["rejected"]["total"] == 4
    assert read_rejected(out / "rejected.csv") == {
        "5.jpg": ("cat", "label conflict"),
        "5 from cat.jpg": ("dog", "label conflict"),
        "6.jpg": ("dog", "label conflict"),
        "6 from dog.jpg": ("horse", "label conflict"),
    }
    splits = {name: read_manifest(out / name) for name in ("train", "val", "test")}
    where = {}
    for name, records in splits.items():
        for record in records:
            assert record.source_sha256 not in where, f"{record.source} is in {where[record.source_sha256]} and {name}"
            where[record.source_sha256] = name
    assert len(where) == 3 * 12 + 4 * 3 - 2  # the two photos under two classes are gone
    for number in range(1, 5):
        copies = {
            name
            for name, records in splits.items()
            for record in records
            if record.label == "cat" and Path(record.source).stem.split("_")[0] == str(number)
        }
        assert len(copies) == 1, f"copies of cat/{number}.jpg landed in {copies}"

    hashes = {
        name: [inspect_image((out / name / record.path, SIDE)).phash for record in records]
        for name, records in splits.items()
    }
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        distances = np.bitwise_count(
            np.array(hashes[first], dtype=np.uint64)[:, None] ^ np.array(hashes[second], dtype=np.uint64)[None, :]
        )
        assert distances.min() > NEAR_DUPLICATE_BITS, f"a photo is in both {first} and {second}"
    assert json.dumps(counts)  # plain numbers only, as split.json needs


def test_a_class_whose_files_are_all_rejected_is_named(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", per_class=4)
    for path in (raw / "horse").iterdir():
        path.write_bytes(b"")
    with pytest.raises(UserError, match=f"class folder '{raw / 'horse'}' has no usable image left"):
        make_split(raw, CLASSES, 64, 0.2, 0.2, 0, tmp_path / "split", tmp_path / "split/rejected.csv")


def test_a_class_of_near_copies_of_too_few_photos_is_named(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", per_class=5)
    for number in range(5):
        (raw / f"horse/{number}.jpg").unlink()
    for size in range(60, 120, 10):  # six files, but only two photos
        photo(900, size=(size, size * 3 // 4)).save(raw / f"horse/a{size}.jpg", quality=90)
        photo(901, size=(size, size * 3 // 4)).save(raw / f"horse/b{size}.jpg", quality=90)
    with pytest.raises(UserError, match=r"class 'horse' has only 2 distinct photos once near duplicates are grouped"):
        make_split(raw, CLASSES, 64, 0.2, 0.2, 0, tmp_path / "split", tmp_path / "split/rejected.csv")


def test_hidden_and_system_files_are_not_listed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = make_raw(tmp_path / "raw", per_class=1)
    for name in (".DS_Store", "._1.jpg", "Thumbs.db", "desktop.ini", ".git/x.jpg", "__MACOSX/._x.jpg"):
        (raw / "cat" / name).parent.mkdir(exist_ok=True)
        (raw / "cat" / name).write_bytes(b"\0")
    (raw / ".hidden_folder").mkdir()
    assert [path.name for path in find_files(raw, CLASSES)["cat"]] == ["0.jpg"]
    assert capsys.readouterr().err == ""
