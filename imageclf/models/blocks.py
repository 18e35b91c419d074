"""A backbone as a chain of blocks, so that its first blocks can stay frozen while its last ones train
(`train.trainable_blocks`): the study notes' 転移学習 trains *part* of the weights.

A chain is [stem, block 1, …, block N, tail]: running its modules one after another is the backbone's forward pass
(in evaluation mode; timm's dropout before its absent classifier is left out), and they are the backbone's own
modules, so training the chain's end trains the backbone. Each architecture family says where its blocks are
(`ModelSpec.chain`); the tail (the last 1×1 convolution where there is one, and the pooling) trains with the last
blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def timm_efficientnet_chain(backbone: nn.Module) -> list[nn.Module]:
    """timm's EfficientNet(-Lite): conv_stem and bn1; every block of every stage; conv_head, bn2 and the pool."""
    from torch import nn

    blocks = [block for stage in backbone.blocks for block in stage]
    tail = nn.Sequential(backbone.conv_head, backbone.bn2, backbone.global_pool)
    return [nn.Sequential(backbone.conv_stem, backbone.bn1), *blocks, tail]


def torchvision_resnet_chain(backbone: nn.Module) -> list[nn.Module]:
    """torchvision's ResNet: conv1, bn1, relu and maxpool; every block of layer1 … layer4; the pool."""
    from torch import nn

    stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
    blocks = [
        block for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4) for block in layer
    ]
    return [stem, *blocks, nn.Sequential(backbone.avgpool, nn.Flatten(1))]


def torchvision_efficientnet_chain(backbone: nn.Module) -> list[nn.Module]:
    """torchvision's EfficientNet: features[0]; every block of features[1:-1]; features[-1] and the pool."""
    from torch import nn

    features = backbone.features
    blocks = [block for stage in features[1:-1] for block in stage]
    return [features[0], *blocks, nn.Sequential(features[-1], backbone.avgpool, nn.Flatten(1))]


def block_count(chain: list[nn.Module]) -> int:
    return len(chain) - 2


def split_chain(chain: list[nn.Module], trainable_blocks: int) -> tuple[nn.Module, nn.Module]:
    """(the frozen first part, the part that trains: the last `trainable_blocks` blocks and the tail)."""
    from torch import nn

    cut = len(chain) - 1 - trainable_blocks
    return nn.Sequential(*chain[:cut]), nn.Sequential(*chain[cut:])
