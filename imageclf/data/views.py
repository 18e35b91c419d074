"""Test-time views: the name → function table behind `evaluate.tta` and `imageclf predict --tta`.

Only Pillow here, so that the `evaluate` params check (`evaluation/params.py`) takes the allowed names from the
table without loading torch.
"""

from collections.abc import Callable

from PIL import Image, ImageOps


def whole(image: Image.Image) -> list[Image.Image]:
    """The photo alone."""
    return [image]


def whole_and_mirror(image: Image.Image) -> list[Image.Image]:
    """The photo and its mirror image; the model's probabilities for the two are averaged."""
    return [image, ImageOps.mirror(image)]


# Every view is the whole photo, resized to the model's square later (no crop, so no subject at an edge is lost).
TTA: dict[str, Callable[[Image.Image], list[Image.Image]]] = {"none": whole, "flip": whole_and_mirror}
DEFAULT_TTA = "none"
