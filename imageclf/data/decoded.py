"""The decoded-image store: each image decoded and resized to the model's input square once, kept as 8-bit pixels in
this machine's cache by the image file's digest, so that no epoch, run or split seed that trains on images decodes a
JPEG again (`DecodedImages`). Online augmentation and normalisation work on those pixels."""

import PIL
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from imageclf.core.store import read_store, store_path, write_store
from imageclf.data.datasets import ImageDataset
from imageclf.data.images import Preprocessing
from imageclf.data.online_augmentation import OnlineAugmentation, image_generator

# Raise when decoding or resizing changes what a stored image holds: the store's name changes with it.
DECODING_VERSION = 1


def store_key(image_size: int) -> str:
    """The name of the store of images decoded at `image_size`: what its pixels depend on besides the file."""
    return f"decoded-{image_size}px-pillow{PIL.__version__}-v{DECODING_VERSION}"


def decoded_pixels(datasets: list[ImageDataset]) -> list[torch.Tensor]:
    """Each dataset's images as (N, 3, size, size) uint8, decoding only those the store does not hold yet, with one
    read and at most one write of the store for all of them; an entry of the wrong shape or type (a damaged store)
    is decoded again, never trusted. The datasets share one input size."""
    size = datasets[0].preprocess.image_size
    path = store_path(store_key(size))
    store = read_store(path)

    def held(digest: str) -> bool:
        pixels = store.get(digest)
        return pixels is not None and pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, size, size)

    missing = {digest: (dataset, index) for dataset in datasets for index, digest in enumerate(dataset.digests)}
    missing = {digest: item for digest, item in missing.items() if not held(digest)}
    for digest, (dataset, index) in tqdm(missing.items(), desc="decode", unit="img", delay=1.0):
        store[digest] = torch.from_numpy(dataset.preprocess.square_pixels(dataset.image(index)).copy())
    if missing:
        write_store(path, store)
    return [torch.stack([store[digest] for digest in dataset.digests]) for dataset in datasets]


class DecodedImages(Dataset):
    """Decoded images as normalised float tensors: with `augmentation`, each image drawn through it afresh in every
    epoch (`set_epoch`), from a generator of `seed`, the epoch and its position.

    `batch` makes a whole batch at once (the training loop's way); items are batches of one.
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: list[int],
        preprocess: Preprocessing,
        augmentation: OnlineAugmentation | None = None,
        seed: int = 0,
    ):
        self.pixels, self.labels, self.preprocess, self.seed = pixels, labels, preprocess, seed
        self.augmentation = augmentation if augmentation is not None and augmentation.changes_images else None
        self.epoch = 1
        self.label_tensor = torch.as_tensor(labels)  # indexed once per batch
        scale, offset = preprocess.scale_and_offset()
        self.scale, self.offset = torch.from_numpy(scale), torch.from_numpy(offset)

    def plain(self) -> "DecodedImages":
        """The same images without augmentation: what features and evaluation see."""
        return DecodedImages(self.pixels, self.labels, self.preprocess)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> list[torch.Tensor]:
        """[inputs, labels] of the images at `index`: augmented for this epoch, then normalised as
        `Preprocessing.normalise` does (the same float32 operations, so the same values)."""
        pixels = self.pixels[index]
        if self.augmentation is not None:
            pixels = self.augmentation(pixels, [image_generator(self.seed, self.epoch, int(at)) for at in index])
        return [pixels.float().mul_(self.scale).sub_(self.offset), self.label_tensor[index]]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = self.batch(torch.tensor([index]))
        return inputs[0], labels[0]
