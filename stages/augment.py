"""Stage augment: copy each training image and write `augment.copies` augmented variants of it beside it.

Usage: python -m stages.augment TRAIN_DIR OUT_DIR
"""

import sys
from pathlib import Path

from imageclf.core.errors import exit_without_final_collection, exits_cleanly
from imageclf.core.params import load_params
from imageclf.data.augmentation import make_augmented


@exits_cleanly
def main(train_dir: str, out_dir: str) -> None:
    params = load_params()
    make_augmented(
        Path(train_dir),
        Path(out_dir),
        params.augment.copies,
        params.augment.seed,
        params.augment.transforms,
    )


if __name__ == "__main__":
    exit_without_final_collection()
    main(*sys.argv[1:])
