"""Online augmentation (`augment.online`): a random resized crop, a mirror image and colour jitter drawn afresh for
every training image in every epoch, on the decoded 8-bit pixels, where a mode trains the convolutions on images.

Each image's draws come from its own generator, seeded by the run's seed, the epoch and the image's position, so the
same params give the same pixels whatever the order or the process that draws them. The crops differ in size, so
each is cropped, resized and mirrored on its own, in 8 bits; the jitter is one colour matrix per image, applied to
the whole batch in one pass (torchvision's three adjustments image by image cost a small network about a tenth of
its training step: docs/benchmarks.md).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional

from imageclf.data.params import OnlineAugmentParams

# The aspect ratios a random resized crop may take, as torchvision's RandomResizedCrop.
CROP_RATIOS = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale: the grey that contrast and saturation blend towards.
LUMA = (0.2989, 0.587, 0.114)


def image_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of image `index` in `epoch`."""
    return np.random.default_rng([seed, epoch, index])


@dataclass(frozen=True)
class Draw:
    """One image's augmentation: its crop box (top, left, height, width; None: the whole image), whether it is
    mirrored, and its brightness, contrast and saturation factors."""

    box: tuple[int, int, int, int] | None
    flip: bool
    jitter: tuple[float, float, float]


class OnlineAugmentation:
    """`augment.online` applied to a batch of 8-bit pixels, channels first."""

    def __init__(self, params: OnlineAugmentParams):
        self.params = params

    @property
    def changes_images(self) -> bool:
        """Whether any part is on: with a crop scale of 1 and no flip or jitter the images stay as they are."""
        return self.params.crop_scale < 1 or self.params.flip > 0 or self.params.color_jitter > 0

    def draw(self, size: list[int], generator: np.random.Generator) -> Draw:
        """One image's draws from its generator, in a fixed order: crop, flip, jitter."""
        box = self.crop_box(size, generator)
        flip = bool(generator.random() < self.params.flip)
        strength = self.params.color_jitter
        factors = generator.uniform(1 - strength, 1 + strength, size=3) if strength > 0 else np.ones(3)
        return Draw(box, flip, tuple(float(factor) for factor in factors))

    def __call__(self, pixels: torch.Tensor, generators: list[np.random.Generator]) -> torch.Tensor:
        """The batch (N, 3, H, W) uint8 augmented, one generator per image: float32 pixels in [0, 255]."""
        size = list(pixels.shape[-2:])
        draws = [self.draw(size, generator) for generator in generators]
        images = torch.stack([crop_and_flip(image, draw, size) for image, draw in zip(pixels, draws, strict=True)])
        images = images.float()
        if self.params.color_jitter > 0:
            images = jitter(images, torch.tensor([draw.jitter for draw in draws]))
        return images

    def crop_box(self, size: list[int], generator: np.random.Generator) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of a crop of `crop_scale` to all of the area and an aspect ratio in
        CROP_RATIOS, as torchvision's RandomResizedCrop draws it; None: the whole image."""
        if self.params.crop_scale >= 1:
            return None
        height, width = size
        for _ in range(CROP_ATTEMPTS):
            area = height * width * generator.uniform(self.params.crop_scale, 1)
            ratio = math.exp(generator.uniform(*np.log(CROP_RATIOS)))
            crop_width, crop_height = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(generator.integers(0, height - crop_height + 1))
                left = int(generator.integers(0, width - crop_width + 1))
                return top, left, crop_height, crop_width
        return None


def crop_and_flip(image: torch.Tensor, draw: Draw, size: list[int]) -> torch.Tensor:
    """One image's crop, resized to `size`, and mirrored if drawn so, in 8 bits. A crop is never larger than the
    image, so resizing it only enlarges: antialiasing would change nothing."""
    if draw.box is not None:
        image = functional.resized_crop(image, *draw.box, size=size, antialias=False)
    return functional.horizontal_flip(image) if draw.flip else image


def jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness, adjust_contrast and adjust_saturation, in that order, with each image's
    factors (N, 3), on float pixels (N, 3, H, W) in [0, 255].

    The three are linear in the pixels, so each image's are one colour matrix and offset, applied in one pass and
    clamped once (torchvision clamps after each, which differs only where a pixel leaves [0, 255] on the way).
    Brightness b, contrast c towards the mean grey m, saturation s towards each pixel's grey (luma L):
    x -> A (c b x + (1 - c) b m), with A = s I + (1 - s) 1 L and m = L · the channels' means.
    """
    brightness, contrast, saturation = factors.T[..., None, None]
    luma = torch.tensor([LUMA])
    saturate = saturation * torch.eye(3) + (1 - saturation) * torch.ones(3, 1) @ luma  # A, (N, 3, 3)
    flat = images.flatten(2)
    mean_grey = flat.mean(dim=2, keepdim=True).transpose(1, 2) @ luma.T  # m, (N, 1, 1)
    matrix = saturate * (contrast * brightness)
    offset = saturate @ torch.ones(3, 1) * ((1 - contrast) * brightness * mean_grey)
    return torch.baddbmm(offset, matrix, flat).clamp_(0, 255).view_as(images)
