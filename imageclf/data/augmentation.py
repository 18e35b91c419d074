"""Training-set augmentation with albumentations, seeded per image so a rerun writes identical files.

Images keep the size split stored them at: the model's input square is made at load time by `Preprocessing`, the
one resize that training, validation, test and prediction images all go through. albumentations and OpenCV are
imported when there is something to augment: with `augment.copies: 0` (the default) the stage only links the
training images (hard links: no bytes are copied), and importing them would be nearly all of its time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from imageclf.core.errors import UserError
from imageclf.core.files import atomic_dir, link_or_copy, write_atomic
from imageclf.data.images import DECODE_ERRORS, jpeg_bytes, open_rgb
from imageclf.data.manifest import Record, read_manifest, unreadable_image, write_manifest

if TYPE_CHECKING:
    import albumentations


def build_transform(transforms: list[dict]) -> albumentations.Compose:
    """An albumentations pipeline from params entries such as `{"HorizontalFlip": {"p": 0.5}}`."""
    import albumentations

    steps = []
    for index, entry in enumerate(transforms):
        ((name, arguments),) = entry.items()
        transform_class = getattr(albumentations, name, None)
        if not (isinstance(transform_class, type) and issubclass(transform_class, albumentations.BasicTransform)):
            raise UserError(f"augment.transforms[{index}]: '{name}' is not an albumentations transform")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # albumentations only warns about a misspelt argument
                steps.append(transform_class(**(arguments or {})))
        except (TypeError, ValueError, UserWarning) as error:
            message = " ".join(line.strip() for line in str(error).splitlines()[:3])
            raise UserError(f"augment.transforms[{index}] ({name}): bad arguments {arguments}: {message}") from None
    return albumentations.Compose(steps)


def image_seed(seed: int, source_sha256: str, copy: int) -> int:
    """A seed for one augmented copy of one image, independent of processing order."""
    return int(np.random.SeedSequence([seed, int(source_sha256[:16], 16), copy]).generate_state(1)[0])


def seed_transform(transform: albumentations.Compose, seed: int) -> None:
    """Give the pipeline and each of its transforms a random stream of its own, all derived from `seed`.

    `Compose.set_random_seed` hands one seed to every transform, so all would draw the same numbers: transforms with
    the same `p` would fire together, and a rarer one only when the commoner ones do.
    """
    streams = np.random.SeedSequence(seed).spawn(len(transform.transforms) + 1)
    transform.set_random_seed(int(streams[0].generate_state(1, np.uint64)[0]))  # also reseeds the transforms
    for step, stream in zip(transform.transforms, streams[1:], strict=True):
        step.set_random_seed(int(stream.generate_state(1, np.uint64)[0]))


def augmented_copy(transform: albumentations.Compose, image: Image.Image, seed: int) -> Image.Image:
    """`image` through `transform`, seeded with `seed`."""
    seed_transform(transform, seed)
    return Image.fromarray(transform(image=np.asarray(image))["image"])


@contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """OpenCV on one thread while the worker processes fork, so each worker keeps to one core.

    Set in the caller, not in the workers: in a fork of a process whose OpenCV thread pool has run (it augmented an
    image itself), cv2.setNumThreads waits forever for pool threads that the fork did not copy.
    """
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


_worker_transform: albumentations.Compose | None = None


def _init_worker(transforms: list[dict]) -> None:
    global _worker_transform
    _worker_transform = build_transform(transforms)


def _augment_one(job: tuple[Path, Path, Record, int, int]) -> list[Record]:
    """Link (or copy) one training image as split stored it and write `copies` augmented variants of it."""
    source_dir, out_dir, record, copies, seed = job
    paths = [f"{record.label}/{record.source_sha256[:16]}_{copy}.jpg" for copy in range(copies + 1)]
    source = source_dir / record.path
    try:
        link_or_copy(source, out_dir / paths[0])  # the original as split stored it, never decoded
        image = open_rgb(source) if copies else None
    except DECODE_ERRORS as error:  # a missing file too (OSError)
        raise unreadable_image(source, f"{type(error).__name__}: {error}") from None
    if copies:
        for copy, path in enumerate(paths[1:], start=1):
            variant = augmented_copy(_worker_transform, image, image_seed(seed, record.source_sha256, copy))
            write_atomic(out_dir / path, jpeg_bytes(variant))
    return [Record(path, record.label, record.source_sha256, record.source) for path in paths]


def make_augmented(train_dir: Path, out_dir: Path, copies: int, seed: int, transforms: list[dict]) -> None:
    """Materialise the training set: each image as split stored it plus `copies` augmented variants. The
    transforms are built, and checked, when there are copies to make; only then do worker processes decode."""
    augmenting = copies > 0
    if augmenting:
        build_transform(transforms)  # fail on bad params before any work
    records = read_manifest(train_dir)
    pool = ProcessPoolExecutor(os.cpu_count(), initializer=_init_worker, initargs=(transforms,)) if augmenting else None
    with (
        atomic_dir(out_dir) as folder,
        opencv_single_threaded() if augmenting else nullcontext(),
        pool or nullcontext(),
    ):
        jobs = [(Path(train_dir), folder, record, copies, seed) for record in records]
        done = pool.map(_augment_one, jobs, chunksize=8) if pool else map(_augment_one, jobs)
        written = [record for batch in tqdm(done, total=len(jobs), desc="augment", unit="img") for record in batch]
        write_manifest(folder, written)
