"""Why the model said what it said: a Grad-CAM heatmap of the last convolutional feature map of a `Classifier`.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of that map by the mean gradient of the explained class's
logit over it, sums the channels, keeps the positive part and scales it to the photo. About 40 lines with one hook,
so no library: grad-cam pulls in OpenCV, torchcam matplotlib, for the same arithmetic. It runs on the PyTorch model
(a forward pass, and a backward pass through the head), so only a caller that asks for a heatmap imports this
module; `predict` without one stays on ONNX Runtime.
"""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from imageclf.data.images import Preprocessing, to_square
from imageclf.models.classifier import Classifier

# The module of each architecture's backbone whose output is its last convolutional feature map (after the
# activation): timm's EfficientNet-Lite `bn2` (BatchNorm with its ReLU6), torchvision's ResNet `layer4` and
# EfficientNet `features`, the `original` CNN's last ReLU before Flatten.
LAST_FEATURE_MAPS: dict[str, str] = {
    "original": "0.15",
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    **{f"efficientnet_b{index}": "features" for index in range(5)},
    "efficientnet_lite0": "bn2",
    "tf_efficientnet_lite0": "bn2",
    "efficientnet_lite1": "bn2",
    "efficientnet_lite2": "bn2",
}
OVERLAY_OPACITY = 0.45


def last_feature_map(model: Classifier, architecture: str) -> nn.Module:
    return model.backbone.get_submodule(LAST_FEATURE_MAPS[architecture])


def grad_cam(
    model: Classifier, architecture: str, images: torch.Tensor, target: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps in [0, 1] of shape (N, H, W), the input's size, and the class each explains: `target`, or by
    default each image's predicted class (from the same forward pass).

    The feature map is made a leaf of the autograd graph and the weights ask for no gradient meanwhile, so the
    backward pass runs through the head alone (Lite0 at 256 px on a busy 2-core CPU: 0.4-0.9 s a photo, about a
    forward pass; 1.4-6.5 s with gradients through the whole backbone).
    """
    captured: dict[str, torch.Tensor] = {}

    def leaf(_: nn.Module, __: tuple, output: torch.Tensor) -> torch.Tensor:
        captured["map"] = output.detach().requires_grad_(True)
        return captured["map"]

    asks_gradient = [parameter.requires_grad for parameter in model.parameters()]
    model.eval().requires_grad_(False)
    hook = last_feature_map(model, architecture).register_forward_hook(leaf)
    try:
        with torch.enable_grad():
            logits = model(images)
            classes = logits.argmax(dim=1) if target is None else torch.full((len(images),), target)
            logits.gather(1, classes[:, None]).sum().backward()
    finally:
        hook.remove()
        for parameter, asked in zip(model.parameters(), asks_gradient, strict=True):
            parameter.requires_grad_(asked)
    feature_map = captured["map"]
    weights = feature_map.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feature_map).sum(dim=1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    return (cam / peak).numpy(), classes.numpy()


def colour_map(heat: np.ndarray) -> np.ndarray:
    """Blue (0) through green and yellow to red (1), as uint8 RGB: the usual 'jet' ramp, without matplotlib."""
    ramp = 4 * heat[..., None] - np.array([3.0, 2.0, 1.0])
    return (np.clip(1.5 - np.abs(ramp), 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class Heatmap:
    """A photo's heatmap (the model's input square, values in [0, 1]), the class it explains, and the photo as the
    model saw it with the heatmap laid over it."""

    heat: np.ndarray
    target: int
    overlay: Image.Image


def heatmap(
    model: Classifier, architecture: str, image: Image.Image, preprocessing: Preprocessing, target: int | None = None
) -> Heatmap:
    """The heatmap of one photo for `target`, or for the class the model predicts."""
    heats, classes = grad_cam(model, architecture, torch.from_numpy(preprocessing(image))[None], target)
    heat = heats[0]
    seen = np.asarray(to_square(image.convert("RGB"), preprocessing.image_size), dtype=np.float32)
    blended = (1 - OVERLAY_OPACITY) * seen + OVERLAY_OPACITY * colour_map(heat)
    return Heatmap(heat, int(classes[0]), Image.fromarray(blended.round().astype(np.uint8)))
