"""ResNet-50 (He et al. 2016): bottleneck blocks 3-4-6-3, widths 64-128-256-512 (x4 out).

The backbone of the NPID ResNet-50 and MoCo models in the FAM paper (section V-C).
Original ReLU by default (``slope=0.0``). At 224 x 224 the feature maps are
(2048, 7, 7); at 64 x 64 they are (2048, 2, 2).
"""

from __future__ import annotations

from torch import Tensor, nn

from fam_lightning.backbones.registry import register_backbone
from fam_lightning.backbones.resnet18 import ResNet


class Bottleneck(nn.Module):
    """conv1x1-BN-act, conv3x3(stride)-BN-act, conv1x1(x4)-BN, plus shortcut, then act."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, slope: float = 0.0) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(slope, inplace=True) if slope else nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


@register_backbone
def resnet50(slope: float = 0.0, **kwargs: object) -> ResNet:
    """ResNet-50 (bottleneck 3-4-6-3); 224 px -> (2048, 7, 7). ReLU unless ``slope`` is set."""
    return ResNet(blocks_per_stage=(3, 4, 6, 3), widths=(64, 128, 256, 512), slope=slope, block=Bottleneck, **kwargs)
