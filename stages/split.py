"""Stage split: decode each raw image once, downscale it, and split the set stratified into train, val, test.

Usage: python stages/split.py OUT_DIR METRICS_JSON
"""

import sys
from pathlib import Path

from imageclf.data import make_split
from imageclf.errors import exits_cleanly
from imageclf.files import write_json
from imageclf.params import load_params


@exits_cleanly
def main(out_dir: str, metrics_path: str) -> None:
    params = load_params()
    counts = make_split(
        Path(params.data.raw_dir),
        params.data.classes,
        params.data.image_size,
        params.split.val,
        params.split.test,
        params.split.seed,
        Path(out_dir),
    )
    write_json(Path(metrics_path), counts)


if __name__ == "__main__":
    main(*sys.argv[1:])
