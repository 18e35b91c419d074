"""Class folders `<raw_dir>/<class>/<image>`: the one place that lists them and says what is wrong with them."""

from pathlib import Path

from imageclf.core.errors import UserError, warn
from imageclf.data.images import is_hidden, is_image_name


def find_files(raw_dir: Path, classes: list[str]) -> dict[str, list[Path]]:
    """The files of each class folder `<raw_dir>/<class>/`, recursively, sorted, without hidden and system files.

    Raises UserError naming the folder when `raw_dir` or a class folder is missing or a class folder holds no
    file with an image suffix; warns once about folders that are not classes.
    """
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
        files = sorted(
            path
            for path in folder.rglob("*")
            if path.is_file() and not any(is_hidden(Path(part)) for part in path.relative_to(folder).parts)
        )
        if not any(is_image_name(path) for path in files):
            raise UserError(f"class folder '{folder}' holds no images (.jpg, .png, .webp, .bmp, ...)")
        found[label] = files
    ignored = sorted(
        path.name for path in raw_dir.iterdir() if path.is_dir() and path.name not in classes and not is_hidden(path)
    )
    if ignored:
        warn(f"{raw_dir}: ignoring folders that are not in data.classes: {', '.join(ignored)}")
    return found


def find_images(raw_dir: Path, classes: list[str]) -> dict[str, list[Path]]:
    """The image files (by suffix) of each class folder; see `find_files` for the checks."""
    return {
        label: [path for path in files if is_image_name(path)] for label, files in find_files(raw_dir, classes).items()
    }
