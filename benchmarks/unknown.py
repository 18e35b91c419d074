"""How often a model calls a photo "none of these" (unknown): photos of its classes, and images of none of them.

    python benchmarks/unknown.py --model models/model.pt --split data/split \\
        --folder ../shared/data/animals10-sample [--class-means]

Every image of the classes should be accepted: the val and test folders of --split, and each --folder. The
others should be flagged: scikit-image's sample pictures (astronaut, coffee, rocket, ...; installed with
`pip install scikit-image`, skipped without it), scikit-learn's two sample photos (temple, flower), and generated
plain colours, noise and rendered text. scikit-image's `chelsea` (a cat) and `horse` (a silhouette) are reported
apart, as pictures of the classes.

Method `max_softmax` is what the project ships: the model's top probability, under the threshold stored in the model
file (chosen on val by the train stage). With --class-means, also `class_means`: the cosine similarity of the frozen
backbone's features to the nearest class's mean feature on the train folder of --split, its threshold chosen on
val the same way (at most 1 % of val under it). Prints one JSON object per method and set, then the totals.
"""

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from imageclf.backbone.frozen import FrozenBackbone
from imageclf.data.datasets import ImageDataset
from imageclf.data.manifest import read_manifest
from imageclf.inference.photos import ViewTransform, files_to_predict, load_views, predict_files
from imageclf.inference.predictor import is_unknown, load_predictor
from imageclf.models.model_file import load_model
from imageclf.training.train import unknown_threshold

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


def max_softmax_scores(model: Path) -> tuple[Callable[[list[Source]], np.ndarray], float | None]:
    """The shipped method: the top probability of each image (through `imageclf predict`'s code path) and the
    model's own threshold."""
    predictor = load_predictor(model)

    def scores(sources: list[Source]) -> np.ndarray:
        predictions = predict_files(predictor, sources, "none", 32, description="max_softmax")
        return np.array([prediction.probabilities.max() for prediction in predictions])

    return scores, predictor.unknown_threshold


def class_mean_scores(
    model: Path, train_dir: Path, val_dir: Path
) -> tuple[Callable[[list[Source]], np.ndarray], float]:
    """The alternative: cosine similarity of an image's backbone features (ONNX Runtime, as the train stage runs
    it) to the nearest class mean of the train folder's features; its threshold flags at most 1 % of val."""
    saved = load_model(model)
    train = ImageDataset.from_manifest(train_dir, saved.classes, saved.preprocessing)
    frozen = FrozenBackbone.for_training(
        saved.architecture, saved.classifier.backbone, "onnxruntime", "fp32", torch.device("cpu"), train, 0
    )
    transform = ViewTransform(saved.preprocessing, "none")

    def features(sources: list[Source]) -> torch.Tensor:
        images = torch.from_numpy(np.stack([load_views(source, transform)[0][0] for source in sources]))
        dataset = torch.utils.data.TensorDataset(images, torch.zeros(len(sources)))
        vectors = frozen.extract(dataset, "features")
        return torch.nn.functional.normalize(vectors, dim=1)

    train_features, labels = frozen.features(train, "train").dataset.tensors
    train_features = torch.nn.functional.normalize(train_features, dim=1)
    means = torch.stack([train_features[labels == index].mean(dim=0) for index in range(len(saved.classes))])
    means = torch.nn.functional.normalize(means, dim=1)

    def scores(sources: list[Source]) -> np.ndarray:
        return (features(sources) @ means.T).max(dim=1).values.numpy()

    return scores, unknown_threshold(scores(split_files(val_dir)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--split", type=Path, default=Path("data/split"), help="the split stage's output folder")
    parser.add_argument("--folder", type=Path, action="append", default=[], help="a folder of photos of the classes")
    parser.add_argument("--class-means", action="store_true", help="also score by distance to the class means")
    args = parser.parse_args()

    of_the_classes = {f"{args.split}/{name}": split_files(args.split / name) for name in ("val", "test")}
    for folder in args.folder:
        of_the_classes[str(folder)] = [path for path, _ in files_to_predict([folder])[0]]
    of_the_classes["skimage chelsea and horse"] = list(skimage_pictures(SKIMAGE_CLASSES).values())
    others = {
        "skimage": skimage_pictures(SKIMAGE_OTHERS),
        "sklearn": sklearn_pictures(),
        "generated": generated_pictures(),
    }

    scores, threshold = max_softmax_scores(args.model)
    if threshold is None:  # a model trained before the threshold existed: choose it here as the train stage would
        threshold = unknown_threshold(scores(of_the_classes[f"{args.split}/val"]))
    methods = {"max_softmax": (scores, threshold)}
    if args.class_means:
        methods["class_means"] = class_mean_scores(args.model, args.split / "train", args.split / "val")
    for method, (scores, threshold) in methods.items():
        report = {"method": method, "threshold": round(threshold, 6)}
        for name, sources in of_the_classes.items():
            flagged = [is_unknown(float(score), threshold) for score in scores(sources)]
            print(json.dumps(report | {"set": name, "images": len(sources), "unknown": sum(flagged)}))
        caught = {}
        for group, pictures in others.items():
            flagged = []
            for name, score in zip(pictures, scores(list(pictures.values())), strict=True):
                flagged.append(is_unknown(float(score), threshold))
                print(json.dumps(report | {"image": name, "score": round(float(score), 4), "unknown": flagged[-1]}))
            caught[group] = f"{sum(flagged)}/{len(flagged)}"
        print(json.dumps(report | {"non_animal_caught": caught}))


if __name__ == "__main__":
    main()
