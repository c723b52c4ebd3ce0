"""What every timm / torchvision backbone shares: the protocol's base class and the dry run.

The dry run (:func:`_dry_run`) builds nothing: it runs the cut model once on a blank image to learn
``out_channels``, checks that the output is a (B, C, h, w) grid, and (timm) freezes the parameters
``forward_features`` never reaches. :mod:`fam_lightning.backbones.external` says what each library's
backbone is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class ExternalBackbone(nn.Module):
    """A model from another library, seen through ``forward_features`` and ``out_channels``.

    Args:
        out_channels: C of the (B, C, h, w) feature maps.
        name: ``<library>:<model>``, for messages.
    """

    def __init__(self, out_channels: int, name: str) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def extra_repr(self) -> str:
        return f"{self.name}, out_channels={self.out_channels}"



def _dry_run(
    name: str, run: object, module: nn.Module, sides: Sequence[tuple[int, int]], freeze_unused: bool
) -> int:
    """Channels of the (B, C, h, w) output of ``run`` on a blank image; the first (H, W) that works."""
    was_training = module.training
    module.eval()
    error: Exception | None = None
    try:
        for height, width in dict.fromkeys(sides):
            try:
                with torch.set_grad_enabled(freeze_unused):
                    out = run(torch.zeros(1, 3, height, width))  # type: ignore[operator]
            except (RuntimeError, AssertionError) as exc:  # too small / fixed-size model: try the next side
                error = exc
                continue
            if out.dim() != 4:
                raise ValueError(
                    f"backbone {name!r} returns {tuple(out.shape)} from forward_features, not (B, C, h, w) "
                    "feature maps (a token sequence whose layout is not known?); wrap the model with "
                    "fam_lightning.adapter.SimilarityAdapter(..., token_grid=TokenGrid(patch_size, num_prefix_tokens))"
                )
            expected = getattr(module, "num_features", None)
            if expected is not None and out.shape[1] != expected and out.shape[-1] == expected:
                raise ValueError(
                    f"backbone {name!r} returns channels-last {tuple(out.shape)} from forward_features; "
                    "FAM needs (B, C, h, w): wrap it with fam_lightning.adapter.SimilarityAdapter("
                    "..., reshape_transform=lambda a: a.permute(0, 3, 1, 2))"
                )
            if freeze_unused:
                _freeze_unreached(module, out)
            return int(out.shape[1])
    finally:
        module.train(was_training)
    tried = ", ".join(f"{h} x {w}" for h, w in dict.fromkeys(sides))
    raise ValueError(f"backbone {name!r} failed a dry run at {tried} px: {error}")


def _freeze_unreached(module: nn.Module, out: Tensor) -> None:
    """Freeze parameters the output does not depend on (e.g. a timm pre-logits conv)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    unreached = [p for p, g in zip(params, grads) if g is None]
    for p in unreached:
        p.requires_grad_(False)
    if unreached:
        log.info("frozen %d parameter tensors that forward_features does not use", len(unreached))
