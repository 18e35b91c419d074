"""What each `train.mode` trains and how its data reaches it: one entry per mode, the only place that says so.

The study notes compare three ways to train a classifier; each is a row here, and the training code asks the row
(`MODES[train.mode]`) instead of comparing mode names.
"""

from dataclasses import dataclass, replace

# How training data reaches the network that trains.
FEATURES = (
    "features"  # the frozen backbone's feature vector of each image, from the feature store: only the head trains
)
IMAGES = "images"  # photos decoded once (the decoded-image store), augmented online, through the whole network
# the activations of the frozen first blocks, from the feature store: the last blocks and the head train
ACTIVATIONS = "activations"


@dataclass(frozen=True)
class Mode:
    """One way to train.

    `pretrained`: the backbone starts from pretrained weights (`train.weights`, or the architecture's ImageNet ones).
    `trains_backbone`: the backbone's weights change; with `pretrained` (`fine_tunes`) the head first trains alone
    on the backbone's features, then the backbone joins it at `lr × train.backbone_lr_scale`.
    `inputs`: FEATURES, ACTIVATIONS or IMAGES.
    `partial`: `train.trainable_blocks` may train the backbone's last blocks too (`with_trainable_blocks`).
    """

    pretrained: bool
    trains_backbone: bool
    inputs: str
    description: str
    partial: bool = False

    def with_trainable_blocks(self, count: int) -> "Mode":
        """This mode with the backbone's last `count` blocks training: on the stored activations of the frozen
        blocks before them, at the backbone's learning rate, after the head alone has trained."""
        if not count:
            return self
        return replace(
            self,
            trains_backbone=True,
            inputs=ACTIVATIONS,
            description=f"the last {count} blocks of the pretrained backbone and a new head, on the stored "
            "activations of the frozen blocks before them",
        )

    @property
    def fine_tunes(self) -> bool:
        """Pretrained weights that change: the head trains first, alone, and the backbone at its own learning rate."""
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
        partial=True,
    ),
    "fine_tuning": Mode(
        pretrained=True,
        trains_backbone=True,
        inputs=IMAGES,
        description="the whole pretrained network after its new head, the backbone at a lower learning rate",
    ),
}
