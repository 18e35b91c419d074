"""The `evaluate` params section."""

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from imageclf.core.config import one_of, require
from imageclf.data.views import TTA


@dataclass(frozen=True)
class EvaluateParams:
    SECTION: ClassVar[str] = "evaluate"
    batch_size: int
    tta: str
    gallery_size: int
    test_images: str
    ood_images: str

    def check(self, path: Path) -> None:
        require(self.batch_size >= 1, path, "evaluate.batch_size", self.batch_size, "it must be 1 or more")
        one_of(self.tta, tuple(TTA), path, "evaluate.tta")
        require(self.gallery_size >= 0, path, "evaluate.gallery_size", self.gallery_size, "it must be 0 or more")
        require(
            not self.ood_images or Path(self.ood_images).is_dir(),
            path,
            "evaluate.ood_images",
            self.ood_images,
            'not a folder: give a folder of photos of none of the classes, or "" for none',
        )
