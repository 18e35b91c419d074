"""Every image mode that phones and the web produce decodes to upright 8-bit RGB with the right pixels."""

import io

import numpy as np
import pytest
from PIL import Image

from imageclf.data.images import open_rgb, to_rgb


def encoded(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def palette_image() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([200, 10, 20] * 256)
    return image


@pytest.mark.parametrize(
    ("image", "image_format", "expected"),
    [
        (Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)), "PNG", (156, 156, 156)),
        (Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)), "PNG", (1, 1, 1)),
        (Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "PNG", (255, 255, 255)),
        (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), "PNG", (10, 20, 30)),
        (Image.new("LA", (4, 4), (0, 0)), "PNG", (255, 255, 255)),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (palette_image(), "PNG", (200, 10, 20)),
        (Image.new("L", (4, 4), 77), "PNG", (77, 77, 77)),
        (Image.new("RGB", (4, 4), (0, 128, 255)), "WEBP", (0, 128, 255)),
        (Image.new("RGB", (4, 4), (0, 128, 255)), "BMP", (0, 128, 255)),
    ],
    ids=[
        "16-bit",
        "16-bit-dark",
        "transparent",
        "opaque-rgba",
        "transparent-gray",
        "cmyk",
        "palette",
        "gray",
        "webp",
        "bmp",
    ],
)
def test_modes_become_rgb(image: Image.Image, image_format: str, expected: tuple[int, int, int]) -> None:
    decoded = open_rgb(encoded(image, image_format, **({"lossless": True} if image_format == "WEBP" else {})))
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, dtype=int)[1, 1] - expected).max() <= 2


def test_a_dark_16_bit_png_in_mode_i_stays_dark() -> None:
    """Pillow before 10.3 opens a 16-bit grayscale PNG in mode I, whose pixels alone do not tell 16 bits from 8."""
    dark = encoded(Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)))  # 200 of 65535: nearly black
    with Image.open(io.BytesIO(dark)) as png:
        as_older_pillow_opens_it = png.convert("I")
    assert as_older_pillow_opens_it.getpixel((1, 1)) == 200
    assert np.asarray(to_rgb(as_older_pillow_opens_it)).max() <= 1


def test_exif_rotated_photo_is_upright() -> None:
    landscape = Image.new("RGB", (40, 20), (255, 0, 0))
    landscape.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored as shot; viewers rotate 90° clockwise
    decoded = open_rgb(encoded(landscape, "JPEG", exif=exif.tobytes(), quality=100))
    assert decoded.size == (20, 40)
    top, bottom = np.asarray(decoded, dtype=int)[5, 10], np.asarray(decoded, dtype=int)[35, 10]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top
    assert bottom[0] > 200 and bottom[2] < 60
