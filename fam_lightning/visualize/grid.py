"""The decision grid (what ``val/fam_probe`` shows), as a pure function of tensors: no trainer, no model.

One column per decision; rows: the image with its ground-truth box (yellow) | one overlay per explainer (framed
green if the decision was right, red if wrong) | the reference(s) the decision was made against (| the first
reference's own map against the image, when given). Above each column: the true and predicted class (when
given) and the decision's similarity; left: the row names; inside each kNN reference tile: its share of the vote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fam_lightning.visualize.primitives import (
    BLACK,
    DARK_GREEN,
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
    fit_width,
    overlay,
    resize_longer_side,
    tile_rows,
)

__all__ = ["decision_grid", "vote_shares"]


def vote_shares(reference_weights: Tensor, shown: int) -> Tensor:
    """(B, N) kNN vote weights -> (B, shown) share of each shown reference in the vote, strongest first.

    The shown references are the strongest voters, strongest first (``MemoryBankModel.explanation_inputs``).
    """
    weights = reference_weights.float()
    shares = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    return shares.sort(dim=1, descending=True).values[:, :shown]


def decision_grid(
    images: Tensor,
    maps: Mapping[str, Tensor],
    correct: Tensor,
    scores: Tensor,
    *,
    boxes: Tensor | list[Tensor] | None = None,
    reference_images: Tensor | None = None,
    reference_maps: Tensor | None = None,
    labels: Tensor | None = None,
    predictions: Tensor | None = None,
    votes: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    tile_size: int = 128,
    alpha: float = 0.5,
) -> Tensor:
    """(3, H', W') CPU grid in [0, 1], one decision per column, tiles of ``tile_size`` px (longer side).

    Args:
        images: (B, 3, H, W) normalised images (``mean`` / ``std``).
        maps: explainer name -> (B, h, w) maps in [0, 1], one row each, in order.
        correct: (B,) bool, whether each decision was right (frame colour, predicted-class colour).
        scores: (B,) the decision's similarity.
        boxes: (B, 4) or a list of (n_i, 4) ground-truth boxes in pixels of ``images``.
        reference_images: (B, 3, H, W) one reference per decision or (B, R, 3, H, W) several (normalised).
        reference_maps: (B, h, w) the first reference's map against the image (drawn beside it).
        labels / predictions: (B,) true / predicted class indices (both, or the header says right / wrong).
        votes: (B, R) each shown reference's share of the kNN vote (:func:`vote_shares`).
        class_names: display names of the class indices.

    Tiles are built on the inputs' device, then the grid and its numbers come to the host in one copy.
    """
    count = images.shape[0] if images.dim() == 4 else -1
    wrong = {name: tuple(m.shape) for name, m in maps.items() if m.dim() != 3 or m.shape[0] != count}
    if count < 0 or wrong or not maps or correct.shape != (count,) or scores.shape != (count,):
        raise ValueError(
            f"decision_grid needs (B, 3, H, W) images with (B, h, w) maps per explainer and (B,) correct / scores, "
            f"got images {tuple(images.shape)}, maps {({n: tuple(m.shape) for n, m in maps.items()})}, correct "
            f"{tuple(correct.shape)}, scores {tuple(scores.shape)}"
        )
    size = tile_size
    scale = size / max(images.shape[-2:])
    shown_images = resize_longer_side(denormalize(images.float(), mean, std), size)
    if boxes is not None:
        scaled = [b * scale for b in boxes] if isinstance(boxes, list) else boxes * scale
        shown_images = draw_boxes(shown_images, scaled, color=YELLOW, thickness=max(1, size // 64))
    frame = max(2, size // 32)
    tiles, names = [shown_images], ["image"]
    for name, explainer_maps in maps.items():
        upsampled = resize_longer_side(explainer_maps.float().unsqueeze(1), size).squeeze(1)
        tiles.append(add_border(overlay(shown_images, upsampled, alpha), correct, frame))
        names.append(name)
    if reference_images is not None:
        shown = reference_images.float()
        shown = shown.unsqueeze(1) if shown.dim() == 4 else shown  # (B, R, 3, H, W): R references
        for r in range(shown.shape[1]):
            references = resize_longer_side(denormalize(shown[:, r], mean, std), size)
            tiles.append(references)
            names.append("reference" if shown.shape[1] == 1 else f"reference {r + 1}")
            if reference_maps is not None and r == 0:
                upsampled = resize_longer_side(reference_maps.float().unsqueeze(1), size).squeeze(1)
                tiles.append(overlay(references, upsampled, alpha))
                names.append("its map")
    # TensorBoard fits the image into a card about 450 x 215 px: the header text is
    # large (a fifth of a tile) so it stays readable there
    font = max(10, round(size / 4.5))
    padding = max(2, size // 32)
    top, left = 3 * font + 4 * padding, font + 2 * padding  # header: 3 lines; left: row names
    canvas = tile_rows(tiles, padding=padding, top=top, left=left)
    named = labels is not None and predictions is not None
    zeros = torch.zeros(images.shape[0], device=images.device)
    true_row, predicted_row = (labels.float(), predictions.float()) if named else (zeros, zeros)
    votes = images.new_zeros(0, 0) if votes is None else votes
    numbers = torch.stack([true_row, predicted_row, scores.float(), correct.float()]).float()
    host = torch.cat([canvas.flatten(), numbers.flatten(), votes.flatten()]).cpu()  # the one sync of the grid
    canvas, rest = host[: canvas.numel()].view_as(canvas), host[canvas.numel():]
    numbers, votes = rest[: numbers.numel()].view(4, -1), rest[numbers.numel():].view_as(votes)
    true, predicted, similarity, right = (row.tolist() for row in numbers)
    tile_width = shown_images.shape[-1]
    step, height = shown_images.shape[-1] + padding, shown_images.shape[-2]
    texts = []
    for column in range(len(similarity)):
        x, verdict = left + padding + column * step, DARK_GREEN if right[column] else RED
        lines = (
            [(f"true {class_label(class_names, true[column])}", BLACK),
             (f"pred {class_label(class_names, predicted[column])}", verdict)]
            if named else [("right" if right[column] else "wrong", verdict)]
        )
        lines.append((f"sim {similarity[column]:.3f}".replace("0.", ".", 1), BLACK))
        for i, (text, color) in enumerate(lines):
            # class names are long: a smaller font where the text would not fit the tile
            size_i = font if fit_width(text, tile_width, font) == text else max(8, font * 3 // 5)
            y = padding + i * (font + padding) + (font - size_i) // 2
            texts.append((x, y, fit_width(text, tile_width, size_i), color, None, size_i))
    row_names = [
        (padding, top + padding + row * (height + padding) + height // 2, name, BLACK)
        for row, name in enumerate(names)
    ]
    if votes.numel():  # kNN decisions: each reference's share of the vote, inside its tile
        first = names.index("reference 1") if "reference 1" in names else names.index("reference")
        rows_of = [first + r + (1 if r > 0 and "its map" in names else 0) for r in range(votes.shape[1])]
        small = max(8, font * 3 // 5)
        for column in range(votes.shape[0]):
            x = left + padding + column * step + padding
            for r, row in enumerate(rows_of):
                y = top + padding + row * (height + padding) + height - small - 2 * padding
                texts.append((x, y, f"vote {votes[column, r]:.2f}".replace("0.", ".", 1), WHITE, BLACK, small))
    return draw_text(
        canvas, texts, font_size=font, vertical=row_names, vertical_font_size=font,
        vertical_max_length=height - padding,
    )
