"""Drawing: primitives (overlays, boxes, text, tiles, filmstrips), the decision grid, matplotlib figures.

- :mod:`fam_lightning.visualize.primitives`: batched torch drawing, text via PIL (re-exported here, so
  ``from fam_lightning.visualize import overlay`` works as it did when this was one module);
- :mod:`fam_lightning.visualize.grid`: :func:`decision_grid`, the probe grid as a pure function of tensors;
- :mod:`fam_lightning.visualize.plots`: matplotlib figures (imported on use only: matplotlib stays optional
  for everything else).
"""

from fam_lightning.visualize.grid import decision_grid, vote_shares
from fam_lightning.visualize.primitives import (
    BLACK,
    DARK_GREEN,
    GREEN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RED,
    WHITE,
    YELLOW,
    add_border,
    class_label,
    denormalize,
    draw_boxes,
    draw_text,
    filmstrip,
    fit_width,
    jet,
    overlay,
    resize_longer_side,
    tile_rows,
)

__all__ = [
    "BLACK", "DARK_GREEN", "GREEN", "IMAGENET_MEAN", "IMAGENET_STD", "RED", "WHITE", "YELLOW", "add_border",
    "class_label", "decision_grid", "denormalize", "draw_boxes", "draw_text", "filmstrip", "fit_width", "jet",
    "overlay", "resize_longer_side", "tile_rows", "vote_shares",
]
