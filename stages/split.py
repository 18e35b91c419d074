"""Stage split: check and decode each raw image once, downscale it, merge duplicates, split stratified.

Usage: python -m stages.split OUT_DIR REJECTED_CSV METRICS_JSON DETAILS_JSON

METRICS_JSON holds the image count of each split; DETAILS_JSON the counts per class, the rejections per reason and
the duplicates.
"""

import sys
from pathlib import Path

from imageclf.core.config import load
from imageclf.core.files import write_json
from imageclf.core.program import exit_without_final_collection, exits_cleanly
from imageclf.data.params import DataParams, SplitParams
from imageclf.data.splitting import headline, make_split


@exits_cleanly
def main(out_dir: str, rejected_path: str, metrics_path: str, details_path: str) -> None:
    data, split = load(DataParams), load(SplitParams)
    counts = make_split(
        Path(data.raw_dir),
        data.classes,
        data.image_size,
        split.val,
        split.test,
        split.seed,
        Path(out_dir),
        Path(rejected_path),
        split.train_limit,
    )
    write_json(Path(details_path), counts)
    write_json(Path(metrics_path), headline(counts))


if __name__ == "__main__":
    exit_without_final_collection()
    main(*sys.argv[1:])
