"""`imageclf fetch`: import a public data set into data/raw: Kaggle's Animals-10 (folders in Italian under
`raw-img/`), the classes of params.yaml, into `<dest>/<English class name>/`."""

import argparse
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from imageclf.core.config import load
from imageclf.core.errors import UserError
from imageclf.core.files import atomic_dir
from imageclf.core.paths import RAW_DIR
from imageclf.data.images import is_hidden
from imageclf.data.params import DataParams

ANIMALS10_SLUG = "alessiocorrado99/animals10"
# The archive's folder names and the class names this project uses.
ANIMALS10_CLASSES = {
    "cane": "dog",
    "cavallo": "horse",
    "elefante": "elephant",
    "farfalla": "butterfly",
    "gallina": "chicken",
    "gatto": "cat",
    "mucca": "cow",
    "pecora": "sheep",
    "ragno": "spider",
    "scoiattolo": "squirrel",
}
KAGGLE_CREDENTIALS = (
    "~/.kaggle/kaggle.json, ~/.kaggle/access_token, KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY"
)


def import_animals10(source: Path, dest: Path, classes: list[str]) -> dict[str, int]:
    """Copy the files of `classes` from the Animals-10 zip or folder `source` into `<dest>/<class>/`.

    Each class folder is replaced as a whole, atomically. Returns the number of files per class.
    """
    english = sorted(ANIMALS10_CLASSES.values())
    unknown = [label for label in classes if label not in english]
    if unknown:
        raise UserError(
            f"data.classes has '{unknown[0]}', which Animals-10 does not have (it has: {', '.join(english)})"
        )
    source = Path(source)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = [info.filename for info in archive.infolist() if not info.is_dir()]
            return _copy_classes(source, members, archive.open, Path(dest), classes)
    if source.is_dir():
        members = [path.relative_to(source).as_posix() for path in sorted(source.rglob("*")) if path.is_file()]
        return _copy_classes(source, members, lambda name: (source / name).open("rb"), Path(dest), classes)
    raise UserError(f"--source '{source}' is neither a zip archive nor a folder: pass the Animals-10 download")


def _copy_classes(
    source: Path, members: list[str], open_member: Callable[[str], BinaryIO], dest: Path, classes: list[str]
) -> dict[str, int]:
    """Copy the members whose innermost class folder (Italian or English name) maps to one of `classes`."""
    names = {**ANIMALS10_CLASSES, **{label: label for label in ANIMALS10_CLASSES.values()}}
    by_class: dict[str, list[tuple[str, str]]] = {label: [] for label in classes}
    for member in members:
        parts = PurePosixPath(member).parts
        if any(is_hidden(Path(part)) or part == ".." for part in parts):
            continue
        folders = [index for index, part in enumerate(parts[:-1]) if names.get(part) in by_class]
        if folders:
            index = folders[-1]
            by_class[names[parts[index]]].append((member, "/".join(parts[index + 1 :])))
    italian = {label: folder for folder, label in ANIMALS10_CLASSES.items()}
    for label, files in by_class.items():
        if not files:
            raise UserError(
                f"'{source}' has no folder '{italian[label]}' (or '{label}') with files: is it the Animals-10 "
                "download (raw-img/cane, raw-img/gatto, ...)?"
            )
    for label, files in by_class.items():
        with atomic_dir(dest / label) as folder:
            for member, name in files:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                with open_member(member) as reader, (folder / name).open("wb") as writer:
                    shutil.copyfileobj(reader, writer)
    return {label: len(files) for label, files in by_class.items()}


def has_kaggle_credentials() -> bool:
    """Whether the Kaggle API would find an API token or key, in the environment or in its config folder."""
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return bool(
        os.environ.get("KAGGLE_API_TOKEN")
        or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
        or (config / "kaggle.json").is_file()
        or (config / "access_token").is_file()
    )


def download_animals10(folder: Path) -> Path:
    """Download the Animals-10 zip into `folder` with the Kaggle API; say in one line what is missing if it can't."""
    missing = []
    if importlib.util.find_spec("kaggle") is None:
        missing.append("the kaggle package (pip install kaggle)")
    if not has_kaggle_credentials():
        missing.append(f"Kaggle credentials ({KAGGLE_CREDENTIALS}; create a token at kaggle.com → Settings → API)")
    if missing:
        raise UserError(
            f"--kaggle needs {' and '.join(missing)}; or download {ANIMALS10_SLUG} yourself and pass --source PATH"
        )
    from kaggle.api.kaggle_api_extended import KaggleApi

    try:
        api = KaggleApi()
        api.authenticate()
        api.dataset_download_files(ANIMALS10_SLUG, path=str(folder), quiet=False)
    except (Exception, SystemExit) as error:  # the client exits or raises on refused credentials and network errors
        raise UserError(f"downloading {ANIMALS10_SLUG} from Kaggle failed: {error}") from None
    return Path(folder) / "animals10.zip"


def fetch_animals10(source: Path | None, use_kaggle: bool, dest: Path, classes: list[str]) -> dict[str, int]:
    """Import from `source`, or download with the Kaggle API into a temporary folder first."""
    if not use_kaggle:
        return import_animals10(source, dest, classes)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(dest).parent, prefix=".animals10-download-") as folder:
        return import_animals10(download_animals10(Path(folder)), dest, classes)


def fetch_command(source: Path | None, use_kaggle: bool, dest: Path) -> int:
    """`imageclf fetch animals10`: check params.yaml, import the configured classes, say what to do next."""
    counts = fetch_animals10(source, use_kaggle, dest, load(DataParams).classes)
    listed = ", ".join(f"{label} {count:,}" for label, count in counts.items())
    print(f"imported {sum(counts.values()):,} files into {dest}/: {listed}")
    print(f"track the folder with DVC:  dvc add {dest}")
    print(f"point data.raw_dir at it:   set 'raw_dir: {dest}' under data: in params.yaml, then dvc repro")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = "Import Kaggle's Animals-10 archive."
    parser.add_argument("dataset", choices=["animals10"], help="the data set")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, metavar="PATH", help="the downloaded zip, or the folder it unpacks to")
    where.add_argument("--kaggle", action="store_true", help="download Animals-10 with the Kaggle API")
    parser.add_argument("--dest", type=Path, default=RAW_DIR, help=f"where <class>/ folders go (default: {RAW_DIR})")


def run(args: argparse.Namespace) -> int:
    return fetch_command(args.source, args.kaggle, args.dest)
