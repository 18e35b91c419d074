"""The split stage's work: check and decode every raw file once, merge duplicates, group near duplicates, and cut
each class into train, val and test."""

import hashlib
import io
import os
import shutil
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from imageclf.core.errors import UserError, warn
from imageclf.core.files import atomic_dir, write_atomic, write_csv
from imageclf.data.draws import ranked
from imageclf.data.folders import find_files
from imageclf.data.images import IMAGE_FORMATS, decode_rgb, is_image_name, jpeg_bytes, shrink_shorter_side
from imageclf.data.manifest import Record, write_manifest

SPLITS = ("train", "val", "test")


def split_records(
    records: list[Record], val: float, test: float, seed: int, groups: dict[str, str] | None = None
) -> dict[str, list[Record]]:
    """Stratified split: each class is shuffled on its own and cut into test, val and train.

    `groups` maps a record's source_sha256 to a group key (near duplicates share one); a group is shuffled and
    assigned as a unit, so all its images land in one split. The result depends only on the records' content
    hashes, the groups, the fractions and the seed, not on file order, and each class lands in every split.
    """
    groups = groups or {}
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    labels = sorted({record.label for record in records})
    for label in labels:
        members = [record for record in records if record.label == label]
        n_val, n_test = max(1, round(len(members) * val)), max(1, round(len(members) * test))
        folder = Path(members[0].source).parent
        if len(members) - n_val - n_test < 1:
            raise UserError(
                f"class '{label}' has only {len(members)} usable images (source folder '{folder}'); "
                f"split.val={val} and split.test={test} need at least {n_val + n_test + 1}: add images or lower "
                "the fractions"
            )
        units: dict[str, list[Record]] = {}
        for record in sorted(members, key=lambda record: record.source_sha256):
            units.setdefault(groups.get(record.source_sha256, record.source_sha256), []).append(record)
        keys = sorted(units)
        order = np.random.default_rng([seed, zlib.crc32(label.encode())]).permutation(len(keys))
        cut = {name: [] for name in SPLITS}
        for index in order:
            name = "test" if len(cut["test"]) < n_test else "val" if len(cut["val"]) < n_val else "train"
            cut[name] += units[keys[index]]
        if not cut["train"]:
            raise UserError(
                f"class '{label}' has only {len(keys)} distinct photos once near duplicates are grouped (source "
                f"folder '{folder}'); each of train, val and test needs at least one: add photos"
            )
        for name in SPLITS:
            splits[name] += cut[name]
    return splits


def draw_per_class(records: list[Record], limit: int, seed: int) -> list[Record]:
    """At most `limit` records of each class, drawn by `seed` from their content (`draws.ranked`): for one seed
    the draw of 100 holds the draw of 30 and lies within the draw of 300. The records keep their order."""
    kept = set()
    for label in sorted({record.label for record in records}):
        members = [record.source_sha256 for record in records if record.label == label]
        kept |= {members[index] for index in ranked(members, f"train_per_class {seed}")[:limit]}
    return [record for record in records if record.source_sha256 in kept]


def count_by_label(records: list[Record], classes: list[str]) -> dict[str, int]:
    return {label: sum(record.label == label for record in records) for label in classes}


def stored_side(image_size: int) -> int:
    """The shorter side split stores images at: 1.15 × the model input.

    Nothing crops: every stage resizes the whole stored photo to the input square. The margin makes that resize a
    downscale even after augmentation zooms in (an Affine scale up to 1.15; the shipped transforms go to 1.1) or
    rotates, so an augmented copy is resampled from real pixels, never upsampled.
    """
    return round(image_size * 1.15)


REJECTED_FIELDS = ["path", "label", "reason", "detail"]
REASONS = (
    "empty file",
    "not an image",
    "unsupported format",
    "truncated",
    "corrupt",
    "too many pixels",
    "label conflict",
)
# Perceptual hashes this many bits apart or fewer are one photo: resized or re-encoded copies differ by at most 2
# bits, brightened ones by up to 6; the closest two different photos among the 3,805 of the animals set, by 6.
NEAR_DUPLICATE_BITS = 4


@dataclass(frozen=True)
class Inspected:
    """What decoding one raw file gave: the downscaled JPEG and its perceptual hash, or why the file was rejected."""

    sha256: str
    content: bytes | None
    phash: int
    reason: str
    detail: str


def perceptual_hash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash (imagehash.phash) of an image as an integer."""
    return int.from_bytes(np.packbits(imagehash.phash(image).hash.flatten()).tobytes(), "big")


def rejection(content: bytes, error: Exception) -> tuple[str, str]:
    """The reason and detail for a file Pillow could not open or decode."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, UnidentifiedImageError):
        if content[4:8] == b"ftyp":  # an ISO media file: HEIC, AVIF or a video
            return "unsupported format", f"{content[8:12].decode('latin-1').strip()} (ISO media) is not read"
        return "not an image", "Pillow cannot identify it"
    if isinstance(error, Image.DecompressionBombError):  # Pillow's limit: about 179 megapixels
        return "too many pixels", detail
    if "truncated" in detail.lower() or isinstance(error, EOFError):
        return "truncated", detail
    return "corrupt", f"{type(error).__name__}: {detail}"


def inspect_image(job: tuple[Path, int]) -> Inspected:
    """Hash, fully decode, check and downscale one raw file so its shorter side is `side`."""
    path, side = job
    content = path.read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    if not content:
        return Inspected(sha256, None, 0, "empty file", "0 bytes")
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(content)) as image:
            warnings.simplefilter("ignore")  # Pillow warns about odd EXIF and large images; the checks follow
            if image.format not in IMAGE_FORMATS:
                return Inspected(sha256, None, 0, "unsupported format", f"{image.format} is not read")
            small = shrink_shorter_side(decode_rgb(image, min_side=side), side)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        return Inspected(sha256, None, 0, *rejection(content, error))
    return Inspected(sha256, jpeg_bytes(small), perceptual_hash(small), "", "")


def near_duplicate_groups(hashes: list[int], max_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """A group number per hash: hashes at most `max_bits` apart are linked, and groups are closed transitively."""
    values = np.array(hashes, dtype=np.uint64)
    rows, columns = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for start in range(0, len(values), 512):
        block = np.bitwise_count(values[start : start + 512, None] ^ values[None, :])
        row, column = np.nonzero(block <= max_bits)
        rows.append(row + start)
        columns.append(column)
    row, column = np.concatenate(rows), np.concatenate(columns)
    graph = coo_matrix((np.ones(len(row), dtype=np.int8), (row, column)), shape=(len(values), len(values)))
    return connected_components(graph, directed=False)[1]


def make_split(
    raw_dir: Path,
    classes: list[str],
    image_size: int,
    val: float,
    test: float,
    seed: int,
    out_dir: Path,
    rejected_path: Path | None = None,
    train_limit: int | None = None,
) -> dict:
    """Check and decode every file once, merge duplicates, split stratified and write `<out_dir>/{train,val,test}`.

    Files that are not usable images and photos found under two classes are listed with a reason in
    `rejected_path` (default `<out_dir>/rejected.csv`) and summed up in one warning; exact duplicates are merged and
    near duplicates kept in one split. With `train_limit`, each class keeps at most that many training photos, drawn
    by `seed` (`draw_per_class`); val and test are the same whatever the limit. Each split folder holds
    `<class>/<sha256[:16]>.jpg` and a manifest. Returns the counts for split.json.
    """
    rejected_path = Path(rejected_path or Path(out_dir) / "rejected.csv")
    found = find_files(raw_dir, classes)
    rejected = [
        {
            "path": str(path),
            "label": label,
            "reason": "unsupported format",
            "detail": f"'{path.suffix}' files are not read",
        }
        for label in classes
        for path in found[label]
        if not is_image_name(path)
    ]
    jobs = [(path, stored_side(image_size), label) for label in classes for path in found[label] if is_image_name(path)]
    by_content: dict[str, dict[str, list[str]]] = {}  # sha256 -> label -> source files
    contents, hashes = {}, {}
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = pool.map(inspect_image, [job[:2] for job in jobs], chunksize=16)
        for (path, _, label), result in zip(
            jobs, tqdm(results, total=len(jobs), desc="split: decode", unit="img"), strict=True
        ):
            if result.content is None:
                rejected.append({"path": str(path), "label": label, "reason": result.reason, "detail": result.detail})
                continue
            by_content.setdefault(result.sha256, {}).setdefault(label, []).append(str(path))
            contents[result.sha256], hashes[result.sha256] = result.content, result.phash
    exact_duplicates = sum(len(paths) - 1 for labels in by_content.values() for paths in labels.values())

    unique = sorted(by_content)
    group_of = near_duplicate_groups([hashes[sha256] for sha256 in unique])
    members: dict[int, list[str]] = {}
    for sha256, group in zip(unique, group_of, strict=True):
        members.setdefault(int(group), []).append(sha256)
    records, groups, near_groups, near_images = [], {}, 0, 0
    for shas in members.values():
        labels = {label for sha256 in shas for label in by_content[sha256]}
        if len(labels) > 1:
            rejected += label_conflicts(shas, by_content)
            continue
        if len(shas) > 1:
            near_groups, near_images = near_groups + 1, near_images + len(shas)
        (label,) = labels
        for sha256 in shas:
            records.append(Record(f"{label}/{sha256[:16]}.jpg", label, sha256, by_content[sha256][label][0]))
            groups[sha256] = shas[0]

    reasons = {reason: sum(row["reason"] == reason for row in rejected) for reason in REASONS}
    if rejected:
        by_reason = ", ".join(f"{count} {reason}" for reason, count in reasons.items() if count)
        warn(f"rejected {len(rejected)} file(s) ({by_reason}): each is listed with its reason in {rejected_path}")
    for label in classes:
        if not any(record.label == label for record in records):
            raise UserError(f"class folder '{Path(raw_dir) / label}' has no usable image left: see the warning above")
    splits = split_records(records, val, test, seed, groups)
    available = count_by_label(splits["train"], classes)
    if train_limit is not None:
        splits["train"] = draw_per_class(splits["train"], train_limit, seed)
    for path in [*(Path(out_dir) / name for name in SPLITS), Path(rejected_path)]:  # no stale half of a new result
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for name, split in splits.items():
        with atomic_dir(Path(out_dir) / name) as folder:
            for record in split:
                write_atomic(folder / record.path, contents[record.source_sha256])
            write_manifest(folder, split)
    write_csv(Path(rejected_path), sorted(rejected, key=lambda row: row["path"]), REJECTED_FIELDS)
    return {
        "images": {name: {**count_by_label(split, classes), "total": len(split)} for name, split in splits.items()},
        "train_per_class": "all" if train_limit is None else train_limit,
        "classes_with_fewer": sorted(label for label, count in available.items() if count < (train_limit or 0)),
        "rejected": {**reasons, "total": len(rejected)},
        "exact_duplicates": exact_duplicates,
        "near_duplicate_groups": near_groups,
        "near_duplicate_images": near_images,
        "label_conflicts": reasons["label conflict"],
    }


def headline(counts: dict) -> dict:
    """metrics/split.json: the images in each split, from `make_split`'s counts."""
    return {"images": {name: split["total"] for name, split in counts["images"].items()}}


def label_conflicts(shas: list[str], by_content: dict[str, dict[str, list[str]]]) -> list[dict]:
    """Rejection rows for every file of one photo (exact or near copies) that was found under several classes."""
    files = [(path, label) for sha256 in shas for label, paths in by_content[sha256].items() for path in paths]
    rows = []
    for path, label in files:
        other_path, other_label = next((other, lab) for other, lab in files if lab != label)
        rows.append(
            {
                "path": path,
                "label": label,
                "reason": "label conflict",
                "detail": f"same photo as '{other_path}' under '{other_label}'",
            }
        )
    return rows
