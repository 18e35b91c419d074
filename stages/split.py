"""Stage split: check and decode each raw image once, downscale it, merge duplicates, split stratified.

Usage: python -m stages.split OUT_DIR REJECTED_CSV METRICS_JSON
"""

import sys
from pathlib import Path

from imageclf.core.errors import exit_without_final_collection, exits_cleanly
from imageclf.core.files import write_json
from imageclf.core.params import load_params
from imageclf.data.splitting import make_split


@exits_cleanly
def main(out_dir: str, rejected_path: str, metrics_path: str) -> None:
    params = load_params()
    counts = make_split(
        Path(params.data.raw_dir),
        params.data.classes,
        params.data.image_size,
        params.split.val,
        params.split.test,
        params.split.seed,
        Path(out_dir),
        Path(rejected_path),
    )
    write_json(Path(metrics_path), counts)


if __name__ == "__main__":
    exit_without_final_collection()
    main(*sys.argv[1:])
