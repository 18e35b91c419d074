"""Image folders, manifests, the stratified split and the torch dataset that reads a manifest."""

import csv
import hashlib
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from imageclf.errors import UserError, warn
from imageclf.files import atomic_dir, write_atomic, write_csv
from imageclf.images import Preprocessing, is_image_name, jpeg_bytes, open_rgb, shrink_shorter_side

MANIFEST_NAME = "manifest.csv"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image of a manifest: `path` is relative to the manifest's folder."""

    path: str
    label: str
    sha256: str
    source: str


def find_images(raw_dir: Path, classes: list[str]) -> dict[str, list[Path]]:
    """The image files of each class folder `<raw_dir>/<class>/`, searched recursively, in sorted order."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise UserError(
            f"data.raw_dir '{raw_dir}' is not a folder: point data.raw_dir in params.yaml at a "
            "folder with one subfolder per class"
        )
    found = {}
    for label in classes:
        folder = raw_dir / label
        if not folder.is_dir():
            raise UserError(f"class folder '{folder}' is missing: create it or remove '{label}' from data.classes")
        files = sorted(path for path in folder.rglob("*") if path.is_file() and is_image_name(path))
        if not files:
            raise UserError(f"class folder '{folder}' holds no images (.jpg, .png, .webp, .bmp, ...)")
        found[label] = files
    ignored = sorted(
        path.name
        for path in raw_dir.iterdir()
        if path.is_dir() and path.name not in classes and not path.name.startswith(".")
    )
    if ignored:
        warn(f"{raw_dir}: ignoring folders that are not in data.classes: {', '.join(ignored)}")
    return found


def split_records(records: list[Record], val: float, test: float, seed: int) -> dict[str, list[Record]]:
    """Stratified split: each class is shuffled on its own and cut into train, val and test.

    The result depends only on the records' content hashes, the fractions and the seed, not on
    file order, and each class lands in every split.
    """
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    labels = sorted({record.label for record in records})
    for label in labels:
        members = sorted((record for record in records if record.label == label), key=lambda record: record.sha256)
        n_val, n_test = max(1, round(len(members) * val)), max(1, round(len(members) * test))
        if len(members) - n_val - n_test < 1:
            raise UserError(
                f"class '{label}' has only {len(members)} usable images (source folder "
                f"'{Path(members[0].source).parent}'); split.val={val} and split.test={test} need "
                f"at least {n_val + n_test + 1}: add images or lower the fractions"
            )
        order = np.random.default_rng([seed, zlib.crc32(label.encode())]).permutation(len(members))
        shuffled = [members[index] for index in order]
        splits["test"] += shuffled[:n_test]
        splits["val"] += shuffled[n_test : n_test + n_val]
        splits["train"] += shuffled[n_test + n_val :]
    return splits


def write_manifest(folder: Path, records: list[Record]) -> None:
    write_csv(Path(folder) / MANIFEST_NAME, [asdict(record) for record in records], list(Record.__dataclass_fields__))


def read_manifest(folder: Path) -> list[Record]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"manifest '{path}' is missing: run the earlier pipeline stages first (dvc repro)")
    with path.open(newline="") as file:
        return [Record(**row) for row in csv.DictReader(file)]


def count_by_label(records: list[Record], classes: list[str]) -> dict[str, int]:
    return {label: sum(record.label == label for record in records) for label in classes}


class ImageDataset(torch.utils.data.Dataset):
    """Labelled image files as (tensor, class index) pairs; `sources` names each item's original file."""

    def __init__(self, paths: list[Path], labels: list[int], sources: list[str], preprocess: Preprocessing):
        self.paths, self.labels, self.sources, self.preprocess = paths, labels, sources, preprocess

    @classmethod
    def from_manifest(cls, folder: Path, classes: list[str], preprocess: Preprocessing) -> "ImageDataset":
        """The images of a split or augmented folder written by this pipeline."""
        records = read_manifest(folder)
        unknown = sorted({record.label for record in records} - set(classes))
        if unknown:
            raise UserError(
                f"{Path(folder) / MANIFEST_NAME} has labels {unknown} that are not among the classes {classes}"
            )
        return cls(
            [Path(folder) / record.path for record in records],
            [classes.index(record.label) for record in records],
            [record.source for record in records],
            preprocess,
        )

    @classmethod
    def from_folder(cls, raw_dir: Path, classes: list[str], preprocess: Preprocessing) -> "ImageDataset":
        """The images of a `<raw_dir>/<class>/<image>` folder."""
        found = find_images(raw_dir, classes)
        paths = [path for label in classes for path in found[label]]
        labels = [index for index, label in enumerate(classes) for _ in found[label]]
        return cls(paths, labels, [str(path) for path in paths], preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = open_rgb(self.paths[index], min_side=self.preprocess.image_size)
        return self.preprocess(image), self.labels[index]


def stored_side(image_size: int) -> int:
    """The shorter side split stores images at: a little above the model input, so augmentation can crop."""
    return round(image_size * 1.15)


def _shrink(job: tuple[Path, int]) -> tuple[str, bytes | None, str]:
    """Hash, decode and downscale one file; returns (sha256, jpeg bytes or None, error)."""
    path, side = job
    content = path.read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    try:
        return sha256, jpeg_bytes(shrink_shorter_side(open_rgb(content, min_side=side), side)), ""
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return sha256, None, f"{type(error).__name__}: {error}"


def make_split(
    raw_dir: Path, classes: list[str], image_size: int, val: float, test: float, seed: int, out_dir: Path
) -> dict:
    """Decode every image once, downscale it, split stratified, and write `<out_dir>/{train,val,test}`.

    Each split folder holds `<class>/<sha256[:16]>.jpg` and a manifest. Returns the counts for split.json.
    """
    found = find_images(raw_dir, classes)
    jobs = [(path, stored_side(image_size)) for label in classes for path in found[label]]
    labels = [label for label in classes for _ in found[label]]
    records, contents, unreadable, duplicates = [], {}, [], 0
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = pool.map(_shrink, jobs, chunksize=16)
        for (path, _), label, (sha256, content, error) in zip(
            jobs, labels, tqdm(results, total=len(jobs), desc="split: decode", unit="img"), strict=True
        ):
            if content is None:
                unreadable.append(f"{path} ({error})")
            elif sha256 in contents:
                duplicates += 1
            else:
                contents[sha256] = content
                records.append(Record(f"{label}/{sha256[:16]}.jpg", label, sha256, str(path)))
    if unreadable:
        warn(f"skipped {len(unreadable)} unreadable image(s): {'; '.join(unreadable)}")
    splits = split_records(records, val, test, seed)
    for name, members in splits.items():
        with atomic_dir(Path(out_dir) / name) as folder:
            for record in members:
                write_atomic(folder / record.path, contents[record.sha256])
            write_manifest(folder, members)
    return {
        "images": {
            name: {**count_by_label(members, classes), "total": len(members)} for name, members in splits.items()
        },
        "unreadable": len(unreadable),
        "duplicates": duplicates,
    }
