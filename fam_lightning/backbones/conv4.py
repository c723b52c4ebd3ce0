"""Conv4 (ProtoNet, Snell et al. 2017) with LeakyReLU(0.1) as in the FAM paper.

Four blocks of conv3x3(64) -> BN -> LeakyReLU(0.1) -> max-pool 2.
At 84 x 84 input the feature maps are (64, 5, 5).
"""

from __future__ import annotations

from torch import Tensor, nn

from fam_lightning.backbones.registry import register_backbone


def conv_block(in_channels: int, out_channels: int, pool: bool = True, slope: float = 0.1) -> nn.Sequential:
    """conv3x3 -> BN -> LeakyReLU (-> max-pool 2)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(slope, inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """A stack of conv blocks; ``pooled_blocks`` of them end in a max-pool."""

    def __init__(
        self,
        channels: int = 64,
        depth: int = 4,
        pooled_blocks: int = 4,
        in_channels: int = 3,
        slope: float = 0.1,
    ) -> None:
        super().__init__()
        blocks = [
            conv_block(in_channels if i == 0 else channels, channels, pool=i < pooled_blocks, slope=slope)
            for i in range(depth)
        ]
        self.features = nn.Sequential(*blocks)
        self.out_channels = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=slope)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, channels, h, w)."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


@register_backbone
def conv4(channels: int = 64, **kwargs: object) -> ConvNet:
    """ProtoNet Conv4: 4 x (conv-BN-LeakyReLU-pool), 64 channels; 84 px -> 5 x 5.

    Args:
        channels: the width of every block (64 as published; ``backbone_kwargs: {channels: 128}`` widens it).
        **kwargs: forwarded to :class:`ConvNet` (``in_channels``, ``slope``).
    """
    return ConvNet(channels=channels, depth=4, pooled_blocks=4, **kwargs)
