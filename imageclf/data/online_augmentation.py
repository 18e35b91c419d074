"""Online augmentation (`augment.online`): a random resized crop, a mirror image and colour jitter drawn afresh for
every training image in every epoch, on the decoded 8-bit pixels, where a mode trains the convolutions on images.

Each image's draws come from its own generator, seeded by the run's seed, the epoch and the image's position, so the
same params give the same pixels whatever the order or the process that draws them.
"""

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional

from imageclf.data.params import OnlineAugmentParams

# The aspect ratios a random resized crop may take, as torchvision's RandomResizedCrop.
CROP_RATIOS = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10


def image_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of image `index` in `epoch`."""
    return np.random.default_rng([seed, epoch, index])


class OnlineAugmentation:
    """`augment.online` applied to one image of 8-bit pixels, channels first."""

    def __init__(self, params: OnlineAugmentParams):
        self.params = params

    @property
    def changes_images(self) -> bool:
        """Whether any part is on: with a crop scale of 1 and no flip or jitter the images stay as they are."""
        return self.params.crop_scale < 1 or self.params.flip > 0 or self.params.color_jitter > 0

    def __call__(self, pixels: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        size = list(pixels.shape[-2:])
        box = self.crop_box(size, generator)
        if box is not None:
            pixels = functional.resized_crop(pixels, *box, size=size, antialias=True)
        if generator.random() < self.params.flip:
            pixels = functional.horizontal_flip(pixels)
        jitter = self.params.color_jitter
        if jitter > 0:
            brightness, contrast, saturation = generator.uniform(1 - jitter, 1 + jitter, size=3)
            pixels = functional.adjust_brightness(pixels, float(brightness))
            pixels = functional.adjust_contrast(pixels, float(contrast))
            pixels = functional.adjust_saturation(pixels, float(saturation))
        return pixels

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
