"""Wide ResNet (Zagoruyko & Komodakis 2016), WRN-28-10 as used in few-shot learning, LeakyReLU(0.1).

The few-shot WRN-28-10 (S2M2, Mangla et al. 2020; Chen et al. 2019 code base):
stem conv3x3(16), then three groups of ``(depth - 4) / 6`` pre-activation
basic blocks (BN -> LeakyReLU -> conv3x3 -> BN -> LeakyReLU -> dropout ->
conv3x3, plus a conv1x1 projection of the pre-activated input where the shape
changes), widths 16k-32k-64k (160-320-640 for k = 10), strides 1-2-2, and a
final BN -> LeakyReLU. The input is divided by 4 only, so at 84 x 84 input the
feature maps are (640, 21, 21) (84 -> 84 -> 42 -> 21).
"""

from __future__ import annotations

from torch import Tensor, nn

from fam_lightning.backbones.registry import register_backbone


class PreActBlock(nn.Module):
    """Pre-activation basic block of a wide ResNet.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (and of the projection shortcut).
        dropout: dropout rate between the two convs.
        slope: LeakyReLU negative slope.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0, slope: float = 0.1
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.LeakyReLU(slope, inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.LeakyReLU(slope, inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        activated = self.act1(self.bn1(x))
        # a projection shortcut sees the pre-activated input, an identity one the raw input
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.act2(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k feature extractor (no pooling, no FC).

    Args:
        depth: total depth; ``(depth - 4) % 6 == 0`` (28 -> 4 blocks per group).
        widen_factor: k; group widths are 16k, 32k, 64k.
        dropout: dropout rate inside each block (0 disables it).
        in_channels: image channels.
        slope: LeakyReLU negative slope.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
        slope: float = 0.1,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        groups: list[nn.Module] = []
        previous = 16
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = [
                PreActBlock(previous if i == 0 else width, width, stride if i == 0 else 1, dropout, slope)
                for i in range(blocks_per_group)
            ]
            groups.append(nn.Sequential(*blocks))
            previous = width
        self.groups = nn.Sequential(*groups)
        self.final = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.LeakyReLU(slope, inplace=True))
        self.out_channels = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=slope)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 64k, ceil(H / 4), ceil(W / 4)); (640, 21, 21) at 84 px for k = 10."""
        return self.final(self.groups(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


@register_backbone
def wrn28_10(depth: int = 28, widen_factor: int = 10, **kwargs: object) -> WideResNet:
    """WRN-28-10 (160-320-640, strides 1-2-2); 84 px -> (640, 21, 21).

    Args:
        depth: WRN depth (e.g. 10 for a tiny WRN-10-1 in tests).
        widen_factor: WRN width multiplier.
        **kwargs: forwarded to :class:`WideResNet` (``dropout``, ``in_channels``, ``slope``).
    """
    return WideResNet(depth=depth, widen_factor=widen_factor, **kwargs)
