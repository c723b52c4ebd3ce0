"""ResNet-12 of MetaOptNet (Lee et al. 2019) / CAN (Hou et al. 2019), with DropBlock.

Four residual blocks, channels 64-160-320-640. Each block is three
conv3x3 -> BN -> LeakyReLU(0.1) (the third activation after the residual sum)
with a conv1x1 + BN shortcut, then max-pool 2, then regularisation: dropout in
the first two blocks, DropBlock (Ghiasi et al. 2018, block size 5) in the last
two. At 84 x 84 input the feature maps are (640, 5, 5) (84 -> 42 -> 21 -> 10 -> 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning.backbones.registry import register_backbone


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): zero whole ``block_size`` squares per channel.

    Block seeds are drawn where a full block fits, with MetaOptNet's rate
    ``gamma = drop_rate / b^2 * (H W) / ((H - b + 1)(W - b + 1))`` so that about
    ``drop_rate`` of the activations are dropped; kept activations are rescaled
    by ``numel / kept``. Training only: at eval it is the identity. ``b`` is
    clipped to the feature map size.

    Args:
        drop_rate: target fraction of dropped activations (1 - keep probability).
        block_size: side of the dropped squares.
        warmup_steps: 0 for a fixed rate; otherwise the rate grows linearly from
            0 to ``drop_rate`` over this many training forwards (MetaOptNet's
            schedule used 40 000).
    """

    def __init__(self, drop_rate: float = 0.1, block_size: int = 5, warmup_steps: int = 0) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.drop_rate = drop_rate
        self.block_size = block_size
        self.warmup_steps = warmup_steps
        # training forwards seen, kept in the state dict so a resumed run resumes the schedule
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def current_drop_rate(self) -> float | Tensor:
        """The scheduled drop rate: a float, or a 0-dim tensor while warming up (no host sync)."""
        if self.warmup_steps <= 0:
            return self.drop_rate
        return self.drop_rate * (self.num_steps / self.warmup_steps).clamp(max=1.0)

    def block_mask(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) mask: 0 inside dropped squares, 1 elsewhere."""
        _, _, height, width = x.shape
        size = min(self.block_size, height, width)
        seed_h, seed_w = height - size + 1, width - size + 1
        gamma = self.current_drop_rate() / size**2 * (height * width) / (seed_h * seed_w)
        seeds = (torch.rand(*x.shape[:2], seed_h, seed_w, device=x.device, dtype=x.dtype) < gamma).to(x.dtype)
        # a seed at (i, j) drops [i, i + size) x [j, j + size): a max-pool over the padded seeds
        dropped = F.max_pool2d(F.pad(seeds, (size - 1,) * 4), kernel_size=size, stride=1)
        return 1.0 - dropped

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if not self.training or self.drop_rate == 0.0:
            return x
        if self.warmup_steps > 0:
            self.num_steps += 1
        mask = self.block_mask(x)
        return x * mask * (mask.numel() / mask.sum().clamp(min=1.0))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}, warmup_steps={self.warmup_steps}"


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (BN follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class ResNet12Block(nn.Module):
    """Three conv3x3-BN(-LeakyReLU) with a conv1x1-BN shortcut, then max-pool 2 and ``drop``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        drop: regulariser applied after the pool (dropout, DropBlock or identity).
        slope: LeakyReLU negative slope.
    """

    def __init__(self, in_channels: int, out_channels: int, drop: nn.Module, slope: float = 0.1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = conv3x3(out_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H // 2, W // 2)."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.act(out + self.shortcut(x))
        return self.drop(self.pool(out))


class ResNet12(nn.Module):
    """Few-shot ResNet-12: four :class:`ResNet12Block` s, no stem, no pooling head.

    Args:
        channels: output channels of the four blocks.
        drop_rate: dropout rate of blocks 1-2 and DropBlock rate of blocks 3-4.
        block_size: DropBlock square side.
        dropblock_warmup: DropBlock linear schedule length in training forwards (0: fixed).
        in_channels: image channels.
        slope: LeakyReLU negative slope.
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 160, 320, 640),
        drop_rate: float = 0.1,
        block_size: int = 5,
        dropblock_warmup: int = 0,
        in_channels: int = 3,
        slope: float = 0.1,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"ResNet12 has 4 blocks, got channels={tuple(channels)}")
        blocks: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            if index < 2:
                drop: nn.Module = nn.Dropout(drop_rate)
            else:
                drop = DropBlock(drop_rate, block_size, warmup_steps=dropblock_warmup)
            blocks.append(ResNet12Block(previous, width, drop, slope=slope))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = int(channels[-1])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=slope)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 640, H // 16, W // 16); (640, 5, 5) at 84 px."""
        return self.blocks(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


@register_backbone
def resnet12(**kwargs: object) -> ResNet12:
    """MetaOptNet ResNet-12 (64-160-320-640, DropBlock 5 / 0.1); 84 px -> (640, 5, 5).

    Args:
        **kwargs: forwarded to :class:`ResNet12`.
    """
    return ResNet12(**kwargs)
