"""`models.heatmap`: Grad-CAM looks where the class is decided."""

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.models.architectures import MODELS, preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.models.heatmap import LAST_FEATURE_MAPS, heatmap, last_feature_map

SIZE = 160  # the `original` CNN's last feature map is 4 × 4 at this size
HALF, SIDE = SIZE // 2, SIZE // 4
COLOURS = [(220, 30, 30), (30, 30, 220), (230, 210, 30)]  # the square that decides the class: red, blue, yellow


def region_image(label: int, rng: np.random.Generator) -> Image.Image:
    """Grey noise with a green square somewhere in the bottom-right quadrant (in every image: no clue), and a red,
    blue or yellow one (class 0, 1, 2) somewhere in the top-left one."""
    pixels = rng.normal(128, 20, (SIZE, SIZE, 3))
    y, x = rng.integers(HALF, SIZE - SIDE, 2)
    pixels[y : y + SIDE, x : x + SIDE] = (40, 200, 40)
    y, x = rng.integers(0, HALF - SIDE, 2)
    pixels[y : y + SIDE, x : x + SIDE] = COLOURS[label]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def region_model():
    """The study group's `original` CNN trained from zero on region images (a minute on a busy CPU)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model("original", 3, SIZE, pretrained=False)
    preprocessing = preprocessing_for("original", SIZE)
    labels = torch.arange(60) % 3
    images = torch.stack([torch.from_numpy(preprocessing(region_image(int(label), rng))) for label in labels])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(15):
        for batch in torch.randperm(len(labels)).split(20):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval(), preprocessing


@pytest.mark.slow
def test_the_heatmap_of_an_image_whose_class_one_region_decides_peaks_in_that_region(region_model) -> None:
    model, preprocessing = region_model
    rng = np.random.default_rng(1)
    for label in (0, 1, 2) * 2:
        image = region_image(label, rng)
        result = heatmap(model, "original", image, preprocessing)
        assert result.target == label, "the network learned the task"
        peak = np.unravel_index(result.heat.argmax(), result.heat.shape)
        assert peak[0] < HALF and peak[1] < HALF, f"peak at {peak}: not in the deciding quadrant"
        assert result.heat[:HALF, :HALF].mean() > result.heat[HALF:, HALF:].mean(), "more on the green square"
        assert result.heat.shape == (SIZE, SIZE) and result.heat.min() >= 0 and result.heat.max() == pytest.approx(1)
        assert result.overlay.size == (SIZE, SIZE) and result.overlay.mode == "RGB"


def test_every_architecture_names_a_last_feature_map() -> None:
    assert set(LAST_FEATURE_MAPS) == set(MODELS)


@pytest.mark.slow
def test_the_named_modules_output_spatial_maps() -> None:
    outputs: dict[str, torch.Tensor] = {}
    for name in ("original", "resnet18", "efficientnet_b0", "efficientnet_lite0"):
        model = create_model(name, 3, SIZE, pretrained=False).eval()
        hook = last_feature_map(model, name).register_forward_hook(
            lambda _, __, output, name=name: outputs.__setitem__(name, output)
        )
        with torch.no_grad():
            model(torch.zeros(1, 3, SIZE, SIZE))
        hook.remove()
        assert outputs[name].ndim == 4 and outputs[name].shape[-1] > 1, f"{name}: a spatial map"
