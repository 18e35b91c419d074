"""How often a model calls a photo "none of these" (unknown), and by which score: photos of its classes, and images of
none of them.

    python benchmarks/unknown.py --model models/model.pt --split data/split --folder ../shared/data/animals10-sample

Every image of the classes should be accepted: the val and test folders of --split, and each --folder. The
others should be flagged: scikit-image's sample pictures (astronaut, coffee, rocket, ...; installed with
`pip install scikit-image`, skipped without it), scikit-learn's two sample photos (temple, flower), and generated
plain colours, noise and rendered text. scikit-image's `chelsea` (a cat) and `horse` (a silhouette) are reported
apart, as pictures of the classes.

The model's own detector decides (the scores and thresholds its model file keeps, through `imageclf predict`'s code
path). Prints one JSON object per set and per image of none of the classes, then the totals. For a photo folder of
none of the classes, set `evaluate.ood_images` and run the pipeline instead: evaluate reports AUROC and more.
"""

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imageclf.data.manifest import read_manifest
from imageclf.inference.photos import files_to_predict, predict_files
from imageclf.inference.predictor import PREDATES, Predictor, load_predictor

Source = Path | bytes
SKIMAGE_OTHERS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "checkerboard",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
SKIMAGE_CLASSES = ("chelsea", "horse")  # a cat photo; a horse's black silhouette


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def skimage_pictures(names: tuple[str, ...]) -> dict[str, bytes]:
    """scikit-image's sample pictures that ship with it (none is downloaded), as PNG bytes."""
    try:
        from skimage import data
    except ImportError:
        return {}
    return {f"skimage.{name}": png(Image.fromarray(getattr(data, name)())) for name in names}


def sklearn_pictures() -> dict[str, bytes]:
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    return {
        f"sklearn.{Path(name).stem}": png(Image.fromarray(image))
        for name, image in zip(samples.filenames, samples.images, strict=True)
    }


def generated_pictures() -> dict[str, bytes]:
    """Plain colours (one of them a single pixel), noise and rendered text."""
    pictures = {"one red pixel": png(Image.new("RGB", (1, 1), (255, 0, 0)))}
    colours = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
    colours |= {"black": (0, 0, 0), "grey": (128, 128, 128), "yellow": (255, 220, 0), "brown": (120, 80, 40)}
    pictures |= {f"plain {name}": png(Image.new("RGB", (256, 256), rgb)) for name, rgb in colours.items()}
    rng = np.random.default_rng(0)
    for index in range(4):
        pictures[f"uniform noise {index}"] = png(Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)))
        blobs = np.kron(rng.integers(0, 256, (16, 16, 3)), np.ones((16, 16, 1))).astype(np.uint8)
        pictures[f"coarse noise {index}"] = png(Image.fromarray(blobs))
    font = ImageFont.load_default(size=28)
    texts = ("Hello, world!", "The quick brown fox jumps over the lazy dog", "cat dog horse", "12345 67890")
    for index, text in enumerate(texts):
        for background, ink in (("white", "black"), ("black", "white")):
            image = Image.new("RGB", (320, 240), background)
            draw = ImageDraw.Draw(image)
            for line in range(5):
                draw.text((10, 10 + 45 * line), text, fill=ink, font=font)
            pictures[f"text {index} {background}"] = png(image)
    return pictures


def split_files(folder: Path) -> list[Path]:
    return [folder / record.path for record in read_manifest(folder)]


def reasons(predictor: Predictor, sources: list[Source]) -> list[tuple[str, ...]]:
    """The scores that flag each image (none: it is taken for one of the classes)."""
    return [prediction.unknown_reason for prediction in predict_files(predictor, sources, "none", 32, "unknown")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--split", type=Path, default=Path("data/split"), help="the split stage's output folder")
    parser.add_argument("--folder", type=Path, action="append", default=[], help="a folder of photos of the classes")
    args = parser.parse_args()

    predictor = load_predictor(args.model)
    if not predictor.unknown_scores:
        raise SystemExit(f"error: {PREDATES}")
    of_the_classes = {f"{args.split}/{name}": split_files(args.split / name) for name in ("val", "test")}
    for folder in args.folder:
        of_the_classes[str(folder)] = [path for path, _ in files_to_predict([folder])[0]]
    of_the_classes["skimage chelsea and horse"] = list(skimage_pictures(SKIMAGE_CLASSES).values())
    others = {
        "skimage": skimage_pictures(SKIMAGE_OTHERS),
        "sklearn": sklearn_pictures(),
        "generated": generated_pictures(),
    }
    report = {"model": str(args.model), "thresholds": predictor.unknown_thresholds}
    for name, sources in of_the_classes.items():
        found = reasons(predictor, sources)
        by_score = {score: sum(score in reason for reason in found) for score in predictor.unknown_scores}
        print(json.dumps({"set": name, "images": len(sources), "unknown": sum(map(bool, found)), "by_score": by_score}))
    caught = {}
    for group, pictures in others.items():
        found = reasons(predictor, list(pictures.values()))
        for name, reason in zip(pictures, found, strict=True):
            print(json.dumps({"image": name, "unknown": bool(reason), "unknown_reason": list(reason)}))
        caught[group] = f"{sum(map(bool, found))}/{len(found)}"
    print(json.dumps(report | {"non_animal_caught": caught}))


if __name__ == "__main__":
    main()
