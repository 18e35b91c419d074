"""Decoding and resizing: every image the project reads goes through here."""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# What Pillow may find inside a file with one of those suffixes and this project reads (MPO: phone camera JPEGs).
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
# What operating systems and zip tools leave in photo folders (compared in lower case); names starting with '.' too.
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"})
JPEG_QUALITY = 95
# What Pillow raises for a file it cannot decode.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_hidden(path: Path) -> bool:
    """Whether `path` is a hidden or system file or folder (`.DS_Store`, macOS `._*` files, `Thumbs.db`)."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


def is_image_name(path: Path) -> bool:
    """Whether `path` has an image file suffix and is not a hidden or system file."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path)


def open_rgb(source: Path | bytes, min_side: int | None = None) -> Image.Image:
    """Decode a file (or its bytes) into an upright RGB image.

    With `min_side`, JPEG decoding runs at the smallest scale that keeps both sides at least
    `min_side` (Pillow's draft mode), which is several times faster for large photos.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return decode_rgb(image, min_side)


def decode_rgb(image: Image.Image, min_side: int | None = None) -> Image.Image:
    """Fully decode an opened image into an upright RGB image (see `open_rgb`)."""
    if min_side is not None:
        image.draft("RGB", (min_side, min_side))
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit and float images are scaled down, transparency becomes white.

    Mode I is scaled as 16 bits, as Pillow's decoders fill it (16-bit PNGs before Pillow 10.3, 16-bit PGMs): the
    scale comes from the mode, never from the pixels, so a dark 16-bit photo stays dark.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(pixels / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def shrink_shorter_side(image: Image.Image, side: int) -> Image.Image:
    """Downscale so the shorter side is `side`, keeping the aspect ratio; smaller images are kept as they are."""
    width, height = image.size
    scale = side / min(width, height)
    if scale >= 1:
        return image
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def to_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the whole image to `size`×`size` (no crop, so no subject is cut off at the edges)."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input: a square of `image_size` pixels, normalised with `mean` and `std`.

    NumPy only, so that predicting with an exported model never imports torch; torch's data loaders turn the
    arrays into tensors.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """The image as a normalised float32 array, channels first (`normalise` of `square_pixels`)."""
        return self.normalise(self.square_pixels(image))

    def square_pixels(self, image: Image.Image) -> np.ndarray:
        """The input square as 8-bit pixels, channels first: what the decoded-image store keeps."""
        return np.asarray(to_square(image, self.image_size)).transpose(2, 0, 1)

    def scale_and_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel (3, 1, 1) float32: (pixel / 255 - mean) / std = pixel × scale - offset."""
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.float32(1 / 255) / std, np.asarray(self.mean, dtype=np.float32)[:, None, None] / std

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """8-bit pixels (channels first) as float32 pixel × scale - offset, in place on one channels-first copy: a
        tenth of the time of the textbook form (three float passes and a transposed copy;
        benchmarks/preprocessing.py)."""
        scale, offset = self.scale_and_offset()
        pixels = pixels.astype(np.float32, order="C")
        pixels *= scale
        pixels -= offset
        return pixels
