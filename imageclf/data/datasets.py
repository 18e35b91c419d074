"""The torch dataset over labelled image files: a stage's folder (its manifest) or a `<folder>/<class>/<image>` tree."""

from functools import cached_property
from pathlib import Path

import torch
from PIL import Image

from imageclf.core.errors import UserError
from imageclf.data.folders import find_images
from imageclf.data.images import DECODE_ERRORS, Preprocessing, open_rgb
from imageclf.data.manifest import MANIFEST_NAME, content_digest, read_manifest, unreadable_image


class ImageDataset(torch.utils.data.Dataset):
    """Labelled image files as (tensor, class index) pairs; `sources` names each item's original file."""

    def __init__(self, paths: list[Path], labels: list[int], sources: list[str], preprocess: Preprocessing):
        self.paths, self.labels, self.sources, self.preprocess = paths, labels, sources, preprocess

    @cached_property
    def digests(self) -> list[str]:
        """Each file's `content_digest`, read once: the train stage needs them for the checkpoint fingerprint, the
        int8 calibration choice and the feature cache, and each pass reads every file."""
        return [content_digest(path) for path in self.paths]

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
        return torch.from_numpy(self.preprocess(self.image(index))), self.labels[index]

    def image(self, index: int) -> Image.Image:
        """Item `index` decoded (at the smallest JPEG scale that still covers the input size); one line naming the
        file when it cannot be."""
        try:
            return open_rgb(self.paths[index], min_side=self.preprocess.image_size)
        except DECODE_ERRORS as error:
            raise unreadable_image(self.paths[index], f"{type(error).__name__}: {error}") from None
