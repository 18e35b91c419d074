"""Where evaluate should get a whole-network model's test inputs: decoding the split's test copies, or the
decoded-image store (`imageclf.data.decoded`) that training filled. The store is one file, read whole and rewritten
whole, so for a test split of a few hundred photos it can cost more than the decoding it saves; this measures both
ways, seconds of wall time, with the store in a temporary cache folder.

    python benchmarks/evaluate_inputs.py --split data/split --image-size 256
"""

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE
from imageclf.core.config import load
from imageclf.data.datasets import ImageDataset
from imageclf.data.decoded import decoded_pixels
from imageclf.data.params import DataParams
from imageclf.models.architectures import preprocessing_for

T = TypeVar("T")


def seconds(work: Callable[[], T]) -> tuple[float, T]:
    """Wall seconds of `work()`, and its result."""
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def measure(split: Path, image_size: int) -> dict:
    """Seconds of each way to the test split's pixels, in a store that holds train and val as training leaves it."""
    preprocessing = preprocessing_for("efficientnet_lite0", image_size)
    classes = load(DataParams).classes  # params.yaml's, as the split was made with them
    train, val, test = (
        ImageDataset.from_manifest(split / name, classes, preprocessing) for name in ("train", "val", "test")
    )
    decoded_pixels([train, val])  # what the train stage leaves in the store
    first, _ = seconds(lambda: decoded_pixels([test]))  # reads it, decodes the test photos, writes it
    held, (pixels,) = seconds(lambda: decoded_pixels([test]))
    decoding, arrays = seconds(lambda: np.stack([preprocessing.square_pixels(test.image(i)) for i in range(len(test))]))
    assert np.array_equal(pixels.numpy(), arrays), "the store holds what decoding gives"
    return {
        "image_size": image_size,
        "test_photos": len(test),
        "store_photos": len(train) + len(val) + len(test),
        "store_first_evaluate_s": float(f"{first:.3g}"),
        "store_later_evaluate_s": float(f"{held:.3g}"),
        "decoding_s": float(f"{decoding:.3g}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=Path("data/split"), help="a split folder (train, val, test)")
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="evaluate-inputs-") as cache:  # the user's cache stays as it is
        os.environ[CACHE_ENVIRONMENT_VARIABLE] = cache
        result = measure(args.split, args.image_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
