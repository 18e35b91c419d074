"""Image decode + resize throughput: a full JPEG decode then resize, against Pillow's draft mode (reduced-scale decode).

Draft mode is what `imageclf.data.images.open_rgb(path, min_side=...)` does: the JPEG is decoded at 1/2, 1/4 or
1/8 scale
when both sides stay at least `min_side`. Both ways end at the size `split` stores (shorter side 1.15 × image size).
The files are read into memory first, so only decoding and resizing are timed, in CPU time of this (single-threaded)
process, so that other work on a shared machine barely moves the figures; the best of `--repeat` passes counts.

    python benchmarks/decode.py --folder ../shared/data/animals --image-size 224 160 112
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import PIL
import yaml
from PIL import Image

from imageclf.data.images import is_image_name, open_rgb, shrink_shorter_side
from imageclf.data.splitting import stored_side

PROJECT = Path(__file__).resolve().parent.parent


def images_per_second(contents: list[bytes], decode: Callable[[bytes], Image.Image], repeat: int) -> float:
    """Images per CPU second of `decode` over all `contents`, best of `repeat` passes."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for content in contents:
            decode(content)
        best = min(best, time.process_time() - start)
    return len(contents) / best


def compare(contents: list[bytes], sizes: list[tuple[int, int]], image_size: int, repeat: int) -> dict:
    """Full decode + resize against draft decode + resize, to the stored side for `image_size`."""
    side = stored_side(image_size)
    full = images_per_second(contents, lambda content: shrink_shorter_side(open_rgb(content), side), repeat)
    draft = images_per_second(
        contents, lambda content: shrink_shorter_side(open_rgb(content, min_side=side), side), repeat
    )
    return {
        "image_size": image_size,
        "stored_side": side,
        "full_decode_images_per_s": round(full, 1),
        "draft_images_per_s": round(draft, 1),
        "speedup": round(draft / full, 2),
        "images_decoded_at_reduced_scale": sum(min(size) >= 2 * side for size in sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=PROJECT.parent / "shared/data/animals")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[yaml.safe_load((PROJECT / "params.yaml").read_text())["data"]["image_size"]],
        help="model input sizes to compare at (default: data.image_size of params.yaml)",
    )
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--repeat", type=int, default=3, help="passes per measurement; the fastest counts")
    args = parser.parse_args()
    paths = sorted(path for path in args.folder.rglob("*") if path.is_file() and is_image_name(path))[: args.limit]
    if not paths:
        sys.exit(f"error: no images in {args.folder}: give a folder of photos with --folder")
    contents = [path.read_bytes() for path in paths]
    sizes = [open_rgb(content).size for content in contents]
    load_before = os.getloadavg()[0]
    results = [compare(contents, sizes, image_size, args.repeat) for image_size in args.image_size]
    report = {
        "folder": str(args.folder),
        "images": len(paths),
        "median_width_height": [statistics.median(size[axis] for size in sizes) for axis in (0, 1)],
        "pillow": PIL.__version__,
        "cpu": f"{os.cpu_count()} cores, {platform.machine()}",
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
