"""ResNet-18 (He et al. 2016) as used at 84 px by Chen et al. 2019 ("A closer look"), LeakyReLU(0.1).

BasicBlocks 2-2-2-2 with widths 64-128-256-512 behind the ImageNet stem
(conv7x7 stride 2 -> BN -> LeakyReLU -> max-pool 3x3 stride 2); every ReLU is
a LeakyReLU(0.1). The stem and the three stride-2 stages divide the input by
32 (rounding up), so at 84 x 84 input the feature maps are (512, 3, 3)
(84 -> 42 -> 21 -> 21 -> 11 -> 6 -> 3); at 224 px they are (512, 7, 7).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fam_lightning.backbones.registry import register_backbone


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-LeakyReLU-conv3x3-BN plus shortcut, then LeakyReLU.

    ``expansion``: output channels per unit of stage width.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (and of the projection shortcut).
        slope: LeakyReLU negative slope.
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, slope: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(slope, inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """ImageNet-style ResNet, without the pooling and FC head.

    Args:
        blocks_per_stage: blocks in each of the four stages.
        widths: output channels of the four stages.
        in_channels: image channels.
        slope: LeakyReLU negative slope (0 gives the original ReLU network).
        block: the residual block class (``BasicBlock`` or a bottleneck with
            ``expansion`` = 4); stage outputs are ``width * block.expansion``.
    """

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 3,
        slope: float = 0.1,
        block: type[nn.Module] = BasicBlock,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != len(widths):
            raise ValueError(f"{len(blocks_per_stage)} stages of blocks but {len(widths)} widths")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.LeakyReLU(slope, inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        previous = widths[0]
        for index, (num_blocks, width) in enumerate(zip(blocks_per_stage, widths)):
            stride = 1 if index == 0 else 2
            out = width * block.expansion
            blocks = [
                block(previous if i == 0 else out, width, stride if i == 0 else 1, slope=slope)
                for i in range(num_blocks)
            ]
            stages.append(nn.Sequential(*blocks))
            previous = out
        self.stages = nn.Sequential(*stages)
        self.out_channels = int(previous)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=slope)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 512, ~H / 32, ~W / 32); (512, 3, 3) at 84 px."""
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


@register_backbone
def resnet18(**kwargs: object) -> ResNet:
    """ResNet-18 (BasicBlock 2-2-2-2, LeakyReLU 0.1); 84 px -> (512, 3, 3).

    Args:
        **kwargs: forwarded to :class:`ResNet` (``in_channels``, ``slope``).
    """
    return ResNet(blocks_per_stage=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kwargs)
