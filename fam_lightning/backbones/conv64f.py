"""Conv64F (Relation Network, Sung et al. 2018) with LeakyReLU(0.1).

Four blocks of conv3x3(64) -> BN -> LeakyReLU(0.1); only the first two end in
a max-pool 2, so the last two keep the resolution (the embedding module of the
Relation Network, used by DN4, CAN and the FAM paper's few-shot models).
At 84 x 84 input the feature maps are (64, 21, 21).
"""

from __future__ import annotations

from fam_lightning.backbones.conv4 import ConvNet
from fam_lightning.backbones.registry import register_backbone


@register_backbone
def conv64f(channels: int = 64, **kwargs: object) -> ConvNet:
    """Conv64F: 4 x (conv-BN-LeakyReLU), pool after the first two; 84 px -> (64, 21, 21).

    Args:
        channels: the width of every block (64 as published; ``backbone_kwargs: {channels: 128}`` widens it).
        **kwargs: forwarded to :class:`ConvNet` (``in_channels``, ``slope``).
    """
    return ConvNet(channels=channels, depth=4, pooled_blocks=2, **kwargs)
