"""Drawing primitives as batched torch ops (no matplotlib): overlays, boxes, frames, tiles, filmstrips; text via PIL
on the host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning.metrics.localization import pad_boxes
from fam_lightning.normalization import IMAGENET_MEAN, IMAGENET_STD

GREEN = (0.1, 0.9, 0.1)
RED = (0.95, 0.1, 0.1)
YELLOW = (1.0, 0.85, 0.0)
BLACK = (0.0, 0.0, 0.0)
WHITE = (1.0, 1.0, 1.0)
DARK_GREEN = (0.0, 0.55, 0.0)  # GREEN is a frame colour; text on white needs a darker one


def denormalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(B, 3, H, W) normalised images -> [0, 1]."""
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def jet(maps: Tensor) -> Tensor:
    """(B, H, W) values in [0, 1] -> (B, 3, H, W) RGB with the 'jet' colour map."""
    x = maps.clamp(0, 1).unsqueeze(1)
    centres = maps.new_tensor([3.0, 2.0, 1.0]).view(1, 3, 1, 1)
    return (1.5 - (4.0 * x - centres).abs()).clamp(0, 1)


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend (B, 3, H, W) images in [0, 1] with the jet rendering of (B, H, W) maps."""
    return ((1 - alpha) * images + alpha * jet(maps)).clamp(0, 1)


def draw_boxes(
    images: Tensor, boxes: Tensor | list[Tensor], color: Sequence[float] = GREEN, thickness: int = 1
) -> Tensor:
    """Draw box outlines ((x0, y0, x1, y1), exclusive ends) on (B, 3, H, W) images in [0, 1]."""
    _, _, height, width = images.shape
    if isinstance(boxes, list):  # an image without annotation: a zero-area box draws nothing
        boxes = [b if b.shape[0] else b.new_zeros(1, 4) for b in boxes]
    padded, valid = pad_boxes(boxes)  # (B, M, 4), (B, M)
    padded = padded.to(device=images.device, dtype=images.dtype)
    ys = torch.arange(height, device=images.device, dtype=images.dtype).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=images.device, dtype=images.dtype).view(1, 1, 1, width) + 0.5
    x0, y0, x1, y1 = (padded[..., i].view(*padded.shape[:2], 1, 1) for i in range(4))
    outer = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    inner = (xs >= x0 + thickness) & (xs < x1 - thickness) & (ys >= y0 + thickness) & (ys < y1 - thickness)
    keep = valid.to(images.device).view(*valid.shape, 1, 1)
    outline = (outer & ~inner & keep).any(dim=1, keepdim=True)  # (B, 1, H, W)
    paint = images.new_tensor(color).view(1, 3, 1, 1).expand_as(images)
    return torch.where(outline, paint, images)


def add_border(images: Tensor, correct: Tensor, thickness: int = 2) -> Tensor:
    """Frame each (B, 3, H, W) image green where ``correct`` (B,) is true, red otherwise."""
    _, _, height, width = images.shape
    frame = torch.ones(height, width, dtype=torch.bool, device=images.device)
    frame[thickness:-thickness, thickness:-thickness] = False
    colors = torch.where(
        correct.view(-1, 1, 1, 1), images.new_tensor(GREEN).view(1, 3, 1, 1), images.new_tensor(RED).view(1, 3, 1, 1)
    )
    return torch.where(frame, colors.expand_as(images), images)


def resize_longer_side(images: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> bilinear resize so that max(H, W) == ``size`` (aspect kept)."""
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    if scale == 1:
        return images
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images, size=target, mode="bilinear", align_corners=False).clamp(0, 1)


def tile_rows(
    rows: Sequence[Tensor], padding: int = 4, top: int = 0, left: int = 0, pad_value: float = 1.0
) -> Tensor:
    """R rows of (B, 3, h, w) tiles -> one (3, top + R (h + p) + p, left + B (w + p) + p) canvas.

    Tile (r, b) is ``rows[r][b]``: one column per sample. ``top`` and ``left``
    reserve blank margins (``pad_value``) for a header and row labels.
    """
    stacked = torch.stack(list(rows))  # (R, B, 3, h, w)
    num_rows, num_cols, channels, height, width = stacked.shape
    stacked = F.pad(stacked, (0, padding, 0, padding), value=pad_value)
    canvas = stacked.permute(2, 0, 3, 1, 4).reshape(channels, num_rows * (height + padding), num_cols * (width + padding))
    return F.pad(canvas, (left + padding, 0, top + padding, 0), value=pad_value)


def draw_text(
    image: Tensor,
    texts: Sequence[tuple[int, int, str, Sequence[float]]],
    font_size: int = 16,
    vertical: Sequence[tuple[int, int, str, Sequence[float]]] = (),
    vertical_font_size: int | None = None,
    vertical_max_length: int | None = None,
) -> Tensor:
    """Write text onto a (3, H, W) image in [0, 1] with PIL's default font.

    ``texts``: ``(x, y, text, rgb)`` items, top-left anchored. ``vertical``:
    ``(x, y_centre, text, rgb)`` items written bottom to top (row labels),
    each shrunk to at most ``vertical_max_length`` pixels.
    Strokes thicken with the size, so text survives TensorBoard's
    nearest-neighbour downscaling. Runs on the host: pass a CPU tensor (one
    copy per image, not per item).
    """
    from PIL import Image, ImageDraw

    font, stroke = _font(font_size), font_size // 24
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    canvas = Image.fromarray(pixels.numpy())
    draw = ImageDraw.Draw(canvas)
    for x, y, text, color, *extra in texts:  # optional: an outline colour (None: none), a font size
        outline = extra[0] if extra else None
        item_font, item_stroke = (_font(extra[1]), extra[1] // 24) if len(extra) > 1 else (font, stroke)
        draw.text((x, y), text, fill=_rgb(color), font=item_font,
                  stroke_width=max(item_stroke, 1 if outline is not None else 0),
                  stroke_fill=_rgb(outline) if outline is not None else _rgb(color))
    for x, y_centre, text, color in vertical:
        size = vertical_font_size or font_size
        font = _font(size)
        if vertical_max_length is not None and draw.textlength(text, font=font) > vertical_max_length:
            font = _font(max(6, int(size * vertical_max_length / draw.textlength(text, font=font))))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        label = Image.new("RGB", (right, bottom), (255, 255, 255))
        ImageDraw.Draw(label).text((0, 0), text, fill=_rgb(color), font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (x, y_centre - label.height // 2))
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(*pixels.shape).permute(2, 0, 1) / 255.0


def fit_width(text: str, width: int, font_size: int) -> str:
    """``text``, cut with an ellipsis so that it is at most ``width`` pixels wide in :func:`draw_text`'s font."""
    from PIL import Image, ImageDraw

    font, draw = _font(font_size), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def class_label(names: Sequence[str] | None, label: float) -> str:
    """The display name of class index ``label`` (a float from a host copy), or the index itself."""
    index = int(round(label))
    return names[index] if names is not None and 0 <= index < len(names) else f"{index}"


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _rgb(color: Sequence[float]) -> tuple[int, ...]:
    return tuple(round(255 * c) for c in color)


def filmstrip(
    image: Tensor,
    maps: Tensor,
    correct: Sequence[bool],
    captions: Sequence[Sequence[tuple[str, Sequence[float]]]],
    alpha: float = 0.5,
) -> Tensor:
    """One probe's maps over training, side by side: (3, S, S) image and (T, S, S) maps -> (3, H, W) in [0, 1].

    Column 0 is the image (boxes already drawn), column t + 1 the overlay of
    ``maps[t]``, framed green where ``correct[t]`` else red. ``captions`` holds
    T + 1 lists of ``(text, rgb)`` lines written above the columns (e.g. the
    step, the prediction, its similarity). CPU tensors: the text is drawn on the host.
    """
    if image.dim() != 3 or maps.dim() != 3 or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"filmstrip needs a (3, S, S) image and (T, S, S) maps, got {tuple(image.shape)} and "
                         f"{tuple(maps.shape)}")
    if len(correct) != maps.shape[0] or len(captions) != maps.shape[0] + 1:
        raise ValueError(f"{maps.shape[0]} maps need as many verdicts and {maps.shape[0] + 1} captions, got "
                         f"{len(correct)} and {len(captions)}")
    size = max(image.shape[-2:])
    frame, padding = max(2, size // 32), max(2, size // 32)
    font = max(10, round(size / 4.5))
    lines = max((len(c) for c in captions), default=0)
    top = lines * (font + padding) + padding
    images = image.float().unsqueeze(0).expand(maps.shape[0], -1, -1, -1)
    verdicts = torch.tensor([bool(c) for c in correct], device=image.device)
    overlays = add_border(overlay(images, maps.float(), alpha), verdicts, frame)
    canvas = tile_rows([torch.cat([image.float().unsqueeze(0), overlays])], padding=padding, top=top)
    step, width = image.shape[-1] + padding, image.shape[-1]
    texts = []
    for column, caption in enumerate(captions):
        for line, (text, color) in enumerate(caption):
            small = font if fit_width(text, width, font) == text else max(8, font * 3 // 5)
            texts.append((padding + column * step, padding + line * (font + padding) + (font - small) // 2,
                          fit_width(text, width, small), color, None, small))
    return draw_text(canvas.cpu(), texts, font_size=font)
