"""Token models as (B, C, h, w) grids: the patch tokens of a transformer, channels first.

FAM and every explainer work on a (B, C, h, w) feature map. A ViT-style model
returns a token sequence (B, N, C): ``num_prefix_tokens`` leading tokens
(class, distillation, registers) followed by the ``h * w`` patch tokens in
row-major order; a Swin-style model returns a channels-last (B, h, w, C) map.
:func:`tokens_to_grid` turns either into the channels-first grid of the patch
tokens only, the grid taken from the actual input size (so nobody hard-codes a
14 x 14 ``reshape_transform`` again)::

    from fam_lightning.adapter import SimilarityAdapter
    from fam_lightning.backbones.tokens import TokenGrid

    model = SimilarityAdapter(feature_extractor=my_vit.forward_features_module, pooling="gap",
                              token_grid=TokenGrid(patch_size=16, num_prefix_tokens=1))
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair (h, w), got {value!r}")
    return int(value[0]), int(value[1])


def grid_size(
    image_size: tuple[int, int], patch_size: int | tuple[int, int], padded: bool = False
) -> tuple[int, int]:
    """(h, w) patch grid of an (H, W) image: ``H // p`` (``ceil`` when the patch embedding pads)."""
    (height, width), (ph, pw) = _pair(image_size), _pair(patch_size)
    if padded:
        return -(-height // ph), -(-width // pw)
    return height // ph, width // pw


def tokens_to_grid(
    tokens: Tensor,
    grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 0,
    channels_last: bool = False,
) -> Tensor:
    """Patch tokens as a channels-first (B, C, h, w) grid.

    Args:
        tokens: (B, N, C) token sequence (``num_prefix_tokens`` leading tokens,
            then ``h * w`` patch tokens, row-major), or a (B, h, w, C)
            channels-last map (``channels_last=True``, Swin), or an already
            channels-first (B, C, h, w) map (returned as is).
        grid: (h, w) of the patch tokens of a sequence, e.g.
            :func:`grid_size` of the input image; None: a square grid.
        num_prefix_tokens: leading class / distillation / register tokens, dropped.
        channels_last: a 4-d ``tokens`` is (B, h, w, C).

    Returns:
        (B, C, h, w), a view where possible (no copy of the tokens).
    """
    if tokens.dim() == 4:
        return tokens.permute(0, 3, 1, 2) if channels_last else tokens
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be (B, N, C) or (B, h, w, C), got shape {tuple(tokens.shape)}")
    if num_prefix_tokens < 0 or num_prefix_tokens >= tokens.shape[1]:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens of the {tokens.shape[1]} tokens"
        )
    patches = tokens[:, num_prefix_tokens:]
    count = patches.shape[1]
    if grid is None:
        side = int(round(count**0.5))
        if side * side != count:
            raise ValueError(
                f"{count} patch tokens (after {num_prefix_tokens} prefix tokens) are not a square grid: "
                "pass grid=(h, w), e.g. grid_size(image.shape[-2:], patch_size)"
            )
        grid = (side, side)
    height, width = _pair(grid)
    if height * width != count:
        raise ValueError(
            f"{count} patch tokens (after {num_prefix_tokens} prefix tokens) do not fill a "
            f"{height} x {width} grid; is num_prefix_tokens or the patch size wrong?"
        )
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


@dataclass(frozen=True)
class TokenGrid:
    """How a user's transformer lays out its tokens, for :class:`~fam_lightning.adapter.SimilarityAdapter`.

    Attributes:
        patch_size: the patch embedding's stride (int or (ph, pw)); the grid is
            ``H // ph`` x ``W // pw`` of the actual input (None: a square grid).
        num_prefix_tokens: leading class / distillation / register tokens.
        channels_last: the output is a (B, h, w, C) map (Swin) rather than tokens.
        padded: the patch embedding pads the input to a multiple of the patch (ceil).
    """

    patch_size: int | tuple[int, int] | None = None
    num_prefix_tokens: int = 0
    channels_last: bool = False
    padded: bool = False

    def __call__(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        """(B, N, C) or (B, h, w, C) output for an (H, W) input -> (B, C, h, w)."""
        grid = None
        if self.patch_size is not None and tokens.dim() == 3:
            grid = grid_size(image_size, self.patch_size, self.padded)
        return tokens_to_grid(tokens, grid, self.num_prefix_tokens, self.channels_last)
