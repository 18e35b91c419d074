"""The params sections of the data stages: `data` (every stage), `split` and `augment` (whose `online` part the train
stage reads)."""

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from imageclf.core.config import require


@dataclass(frozen=True)
class DataParams:
    SECTION: ClassVar[str] = "data"
    raw_dir: str
    classes: list[str]
    image_size: int

    def check(self, path: Path) -> None:
        require(
            len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes),
            path,
            "data.classes",
            self.classes,
            "it needs at least two distinct class names",
        )
        require(self.image_size >= 32, path, "data.image_size", self.image_size, "it must be at least 32 (pixels)")


# `split.train_per_class`: keep every training photo.
ALL = "all"


@dataclass(frozen=True)
class SplitParams:
    SECTION: ClassVar[str] = "split"
    val: float
    test: float
    seed: int
    train_per_class: int | str  # a number of photos, or ALL

    @property
    def train_limit(self) -> int | None:
        """The most training photos a class keeps; None: all of them."""
        return None if self.train_per_class == ALL else self.train_per_class

    def check(self, path: Path) -> None:
        require(
            self.train_per_class == ALL if isinstance(self.train_per_class, str) else self.train_per_class >= 1,
            path,
            "split.train_per_class",
            self.train_per_class,
            f"give the most training photos a class keeps, 1 or more, or {ALL}",
        )
        require(0 < self.val < 1, path, "split.val", self.val, "it must be between 0 and 1")
        require(0 < self.test < 1, path, "split.test", self.test, "it must be between 0 and 1")
        require(
            self.val + self.test < 1,
            path,
            "split.test",
            self.test,
            f"split.val + split.test must stay below 1 to leave training data (split.val is {self.val})",
        )


@dataclass(frozen=True)
class OnlineAugmentParams:
    """`augment.online`: what the train stage draws afresh for every training image in every epoch, where a mode
    trains on images (`imageclf.data.online_augmentation`)."""

    crop_scale: float  # random resized crop: the smallest share of the image's area kept (1: no crop)
    flip: float  # probability of the mirror image
    color_jitter: float  # brightness, contrast and saturation each scaled by a factor in [1 - this, 1 + this]

    def check(self, path: Path) -> None:
        require(0 < self.crop_scale <= 1, path, "augment.online.crop_scale", self.crop_scale, "it must be in (0, 1]")
        require(0 <= self.flip <= 1, path, "augment.online.flip", self.flip, "it must be in [0, 1]")
        require(
            0 <= self.color_jitter < 1, path, "augment.online.color_jitter", self.color_jitter, "it must be in [0, 1)"
        )


@dataclass(frozen=True)
class AugmentParams:
    SECTION: ClassVar[str] = "augment"
    copies: int
    seed: int
    transforms: list[dict]
    online: OnlineAugmentParams

    def check(self, path: Path) -> None:
        self.online.check(path)
        require(self.copies >= 0, path, "augment.copies", self.copies, "it must be 0 or more")
        for index, transform in enumerate(self.transforms):
            require(
                len(transform) == 1 and isinstance(next(iter(transform.values())) or {}, dict),
                path,
                f"augment.transforms[{index}]",
                transform,
                "each entry must be one albumentations transform name with its arguments, e.g. "
                "'HorizontalFlip: {p: 0.5}'",
            )
