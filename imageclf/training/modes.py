"""What each `train.mode` trains and how its data reaches it: one entry per mode, the only place that says so.

The study notes compare three ways to train a classifier; each is a row here, and the training code asks the row
(`MODES[train.mode]`) instead of comparing mode names.
"""

from dataclasses import dataclass

# How training data reaches the network that trains.
FEATURES = (
    "features"  # the frozen backbone's feature vector of each image, from the feature store: only the head trains
)
IMAGES = "images"  # decoded photos through the whole network


@dataclass(frozen=True)
class Mode:
    """One way to train.

    `pretrained`: the backbone starts from pretrained weights (`train.weights`, or the architecture's ImageNet ones).
    `trains_backbone`: the backbone's weights change; with `pretrained` it learns at `lr × train.backbone_lr_scale`
    and waits `train.warmup_epochs` while the new head settles.
    `inputs`: FEATURES or IMAGES.
    """

    pretrained: bool
    trains_backbone: bool
    inputs: str
    description: str

    @property
    def fine_tunes(self) -> bool:
        """Pretrained weights that change: the backbone's own learning rate and warm-up apply."""
        return self.pretrained and self.trains_backbone

    @property
    def chooses_weight_decay(self) -> bool:
        """`train.weight_decay: auto` tries several L2 strengths only where a candidate costs a second: a head on
        stored features. Elsewhere each would be a whole training run, and auto means 0."""
        return self.inputs == FEATURES


MODES: dict[str, Mode] = {
    "fromzero": Mode(
        pretrained=False, trains_backbone=True, inputs=IMAGES, description="the whole network from random weights"
    ),
    "transfer_learning": Mode(
        pretrained=True,
        trains_backbone=False,
        inputs=FEATURES,
        description="a new head on the frozen pretrained backbone's features",
    ),
    "fine_tuning": Mode(
        pretrained=True,
        trains_backbone=True,
        inputs=IMAGES,
        description="the whole pretrained network, the backbone at a lower learning rate",
    ),
}
