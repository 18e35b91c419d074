"""Which training images calibrate an int8 backbone: a choice that depends on a seed and the images' content only,
so the same images and seed give the same quantized model (the train stage, `imageclf export`)."""

from imageclf.data.draws import ranked

# int8: training images whose activation ranges set the quantization (2 batches). On three splits of the animals
# photos, 32, 64, 128 and 320 of them gave the same test and hold-out mistakes, one test photo apart
# (docs/results.md).
CALIBRATION_IMAGES = 64


def calibration_indices(digests: list[str], seed: int, count: int = CALIBRATION_IMAGES) -> list[int]:
    """`count` distinct images, ranked by a seeded hash of their content: the choice depends on the seed and the
    images only, not on their order, and adding an image changes it only if the new one ranks among the first."""
    return ranked(digests, str(seed))[:count]
