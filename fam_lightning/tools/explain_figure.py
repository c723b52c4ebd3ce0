"""fam-explain's figure: the photo and its overlays in a grid, the decision in words, references, a colour bar.

Pure drawing on PIL images (no model, no data); :func:`save_png` writes atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fam_lightning.io import atomic_write
from fam_lightning.tools.explain_photo import Photo
from fam_lightning.visualize import jet

MAX_COLUMNS = 4
GAP = 8  # pixels between panels
MAX_FIGURE_WIDTH = 2560  # a row of panels stays within this (photos shown smaller when many panels)
MAX_REFERENCES_SHOWN = 4
WARNING_COLOUR = (190, 0, 0)
COLOUR_BAR_LABEL = "map value (each map scaled to [0, 1]):  0"
MIN_BAR = 128  # pixels of the colour bar at least


def compose_figure(
    panels: Sequence[tuple[str, Tensor]],
    header: Sequence[str],
    references: Sequence[tuple[str, Tensor]] = (),
    warnings: Sequence[str] = (),
    colour_bar: bool = True,
) -> Image.Image:
    """Panels ``(label, (3, H0, W0) in [0, 1])`` in a grid of at most 4 columns, labelled, under ``header``.

    Below them: the ``references`` (each scaled to the panels' height, at most 4), then a jet colour bar.
    ``warnings`` are printed in red under the header.
    """
    height, width = panels[0][1].shape[1:]
    font = _font(max(12, min(48, min(width, height) // 14)))
    line = font.getbbox("Ag")[3] + 6
    columns = min(len(panels), MAX_COLUMNS)
    grid_rows = -(-len(panels) // columns)
    texts = [*header, *warnings]
    header_height = line * len(texts) + GAP
    cell_height = line + height
    shown_refs = [(label, _fit_height(pixels, height, 2 * width)) for label, pixels in references[:MAX_REFERENCES_SHOWN]]
    refs_width = sum(p.shape[2] for _, p in shown_refs) + (len(shown_refs) + 1) * GAP
    refs_height = (line + height + 2 * GAP + line) if shown_refs else 0
    bar_height = (line + max(10, line // 2) + GAP) if colour_bar else 0
    text_width = max(int(font.getlength(text)) for text in texts) + 2 * GAP if texts else 0
    label_width = max((int(font.getlength(label)) + GAP for label, _ in shown_refs), default=0)
    bar_width = int(font.getlength(COLOUR_BAR_LABEL) + font.getlength("1")) + 4 * GAP + MIN_BAR if colour_bar else 0
    figure_width = max(columns * width + (columns + 1) * GAP, text_width, refs_width, label_width, bar_width)
    grid_bottom = header_height + grid_rows * (cell_height + GAP) + GAP
    figure = Image.new("RGB", (figure_width, grid_bottom + refs_height + bar_height), "white")
    draw = ImageDraw.Draw(figure)
    for i, text in enumerate(texts):
        colour = "black" if i < len(header) else WARNING_COLOUR
        draw.text((GAP, GAP // 2 + i * line), text, fill=colour, font=font)
    for index, (label, pixels) in enumerate(panels):
        row, column = divmod(index, columns)
        x = GAP + column * (width + GAP)
        y = header_height + GAP + row * (cell_height + GAP)
        draw.text((x, y), label, fill="black", font=font)
        figure.paste(_to_pil(pixels), (x, y + line))
    if shown_refs:
        y = grid_bottom
        more = len(references) - len(shown_refs)
        draw.text((GAP, y), "reference images of the decision" + (f" ({more} more not shown)" if more else ""),
                  fill="black", font=font)
        x = GAP
        for label, pixels in shown_refs:
            figure.paste(_to_pil(pixels), (x, y + line))
            draw.text((x, y + line + pixels.shape[1] + 2), _fit(label, font, max(pixels.shape[2] - GAP // 2, 8)),
                      fill="black", font=font)
            x += pixels.shape[2] + GAP
    if colour_bar:
        _draw_colour_bar(figure, draw, font, grid_bottom + refs_height, line)
    return figure


def _draw_colour_bar(figure: Image.Image, draw: ImageDraw.ImageDraw, font: Any, top: int, line: int) -> None:
    """A jet gradient from 0 (left) to 1 (right) with its meaning, along the figure's bottom."""
    label = COLOUR_BAR_LABEL
    x = GAP + int(font.getlength(label)) + GAP
    bar_width = max(MIN_BAR, min(figure.width - x - int(font.getlength("1")) - 2 * GAP, 400))
    bar_height = max(10, line // 2)
    ramp = torch.linspace(0, 1, bar_width).view(1, 1, -1).expand(1, bar_height, -1)
    draw.text((GAP, top), label, fill="black", font=font)
    figure.paste(_to_pil(jet(ramp)[0]), (x, top + (line - bar_height) // 2))
    draw.text((x + bar_width + GAP, top), "1", fill="black", font=font)


def _fit_height(pixels: Tensor, height: int, max_width: int) -> Tensor:
    """(3, h, w) resized to ``height`` rows (aspect kept, width at most ``max_width``)."""
    h, w = pixels.shape[1:]
    scale = min(height / h, max_width / w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return pixels
    mode = "nearest" if scale >= 1 else "bilinear"  # enlarged small images keep their pixels
    kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
    return F.interpolate(pixels[None].float(), size=size, mode=mode, **kwargs)[0].clamp(0, 1)


def _fit(text: str, font: Any, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _to_pil(pixels: Tensor) -> Image.Image:
    array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def save_png(image: Image.Image, path: Path) -> None:
    """PNG written atomically (temporary file beside it, then ``os.replace``)."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def output_names(paths: Sequence[str | Path]) -> list[str]:
    """File stems, prefixed by their position where two inputs share one."""
    stems = [Path(p).stem for p in paths]
    return [f"{i:03d}_{stem}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]


def figure_header(photo: Photo, decision_lines: Sequence[str], scale: int = 1) -> list[str]:
    """The lines above a figure: file (and display ``scale``), the decision, what part of the photo the model saw."""
    height, width = photo.pixels.shape[1:]
    shown = f", shown {scale}x" if scale > 1 else ""
    lines = [f"{photo.path.name} ({width} x {height}{shown})", *decision_lines]
    if photo.cropped:
        lines.append(f"the model saw the centre crop {photo.crop} only (x0, y0, x1, y1); outside it is dimmed")
    return lines
