"""Stage augment: copy each training image and write `augment.copies` augmented variants of it beside it.

Usage: python -m stages.augment TRAIN_DIR OUT_DIR
"""

import sys
from pathlib import Path

from imageclf.core.config import load
from imageclf.core.program import exit_without_final_collection, exits_cleanly
from imageclf.data.augmentation import make_augmented
from imageclf.data.params import AugmentParams


@exits_cleanly
def main(train_dir: str, out_dir: str) -> None:
    augment = load(AugmentParams)
    make_augmented(Path(train_dir), Path(out_dir), augment.copies, augment.seed, augment.transforms)


if __name__ == "__main__":
    exit_without_final_collection()
    main(*sys.argv[1:])
