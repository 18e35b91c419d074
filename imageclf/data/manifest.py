"""What every stage after split reads: the manifest of a stage's output folder (`datasets.ImageDataset` is the torch
dataset over it). No torch here: split and augment write manifests without loading it."""

import csv
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from imageclf.core.errors import UserError
from imageclf.core.files import write_csv

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class Record:
    """One image of a manifest: `path` is relative to the manifest's folder."""

    path: str
    label: str
    source_sha256: str  # of the source photo, not of the file at `path`
    source: str


def write_manifest(folder: Path, records: list[Record]) -> None:
    write_csv(Path(folder) / MANIFEST_NAME, [asdict(record) for record in records], list(Record.__dataclass_fields__))


def read_manifest(folder: Path) -> list[Record]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"manifest '{path}' is missing: run the earlier pipeline stages first (dvc repro)")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != list(Record.__dataclass_fields__):
            raise UserError(
                f"manifest '{path}' has the columns {reader.fieldnames}, not {list(Record.__dataclass_fields__)}: "
                "it was written by another version; rerun the stages (dvc repro --force)"
            )
        return [Record(**row) for row in reader]


def unreadable_image(path: Path, reason: str) -> UserError:
    """The one-line error for an image of a stage's folder that cannot be decoded."""
    return UserError(
        f"cannot read '{path}' ({reason}): the stages write only images they checked; rebuild their folders with "
        "dvc repro --force"
    )


def content_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
