"""Explain a trained model's decisions on image files: one PNG figure per image, at the image's own resolution.

    fam-explain --ckpt_path logs/quickstart/version_0/checkpoints/last.ckpt \
        --images bird1.jpg bird2.jpg --references ref1.jpg ref2.jpg \
        --explainers fam gradcam scorecam --out explanations

With ``--references`` the images are explained against the references'
embeddings as one class's support set: the decision score is each image's
mean similarity to them (printed in the figure). Without references only the
reference-free explainers (grad_fam, score_fam, eigencam), which explain the
embedding itself, can run.

The model class and its input size are read from the checkpoint
(``--model_class`` / ``--image_size`` override them). Each image goes to the
model as the data modules feed it: the whole image resized to the input size
(``--preprocess resize``), ImageNet mean / std. ``--preprocess center_crop``
feeds the largest centred square instead; the map then covers only that
square, the rest of the photo is dimmed, and the figure says so.

Each figure, ``<out>/<image stem>.png`` (written atomically), holds the photo
at its original resolution beside one overlay per explainer, the map
upsampled bilinearly from the model's input to the photo's pixels.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fam_lightning.datamodules.imagenet import decode_rgb
from fam_lightning.explainers import EXPLAINERS
from fam_lightning.loading import datamodule_arguments, load_model, read_checkpoint
from fam_lightning.report import atomic_write
from fam_lightning.similarity import mean_similarity
from fam_lightning.visualize import IMAGENET_MEAN, IMAGENET_STD, overlay

DEFAULT_IMAGE_SIZE = 84
PREPROCESSING = ("resize", "center_crop")
MAX_COLUMNS = 4
GAP = 8  # pixels between panels


@dataclass
class Photo:
    """An image file as the model sees it and as the figure shows it.

    Attributes:
        path: the file.
        pixels: float (3, H0, W0) in [0, 1], the original resolution.
        model_input: (3, S, S) normalised input of the model.
        crop: (x0, y0, x1, y1) in original pixels, x1 / y1 exclusive: the part the model saw.
    """

    path: Path
    pixels: Tensor
    model_input: Tensor
    crop: tuple[int, int, int, int]

    @property
    def cropped(self) -> bool:
        return self.crop != (0, 0, self.pixels.shape[2], self.pixels.shape[1])


def read_photo(path: str | Path, size: int, preprocess: str = "resize") -> Photo:
    """Decode ``path`` as RGB; errors name the file."""
    path = Path(path)
    rgb = decode_rgb(path)
    width, height = rgb.size
    if preprocess == "center_crop":
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        crop = (x0, y0, x0 + side, y0 + side)
    elif preprocess == "resize":
        crop = (0, 0, width, height)
    else:
        raise ValueError(f"preprocess must be one of {PREPROCESSING}, got {preprocess!r}")
    seen = rgb.crop(crop).resize((size, size), Image.Resampling.BILINEAR)  # as fam_lightning.datamodules.cub.load_resized_image
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return Photo(path, _to_tensor(rgb), (_to_tensor(seen) - mean) / std, crop)


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def map_to_photo(saliency: Tensor, photo: Photo) -> Tensor:
    """(S, S) map of the model's input -> (H0, W0) map of the photo; zero outside the crop.

    The input was the crop resized to S x S, so the map is resized back to the
    crop's size (bilinear) and placed where the crop came from.
    """
    x0, y0, x1, y1 = photo.crop
    inside = F.interpolate(saliency[None, None].float(), size=(y1 - y0, x1 - x0), mode="bilinear",
                           align_corners=False)[0, 0].clamp(0, 1)
    full = saliency.new_zeros(photo.pixels.shape[1:], dtype=torch.float32)
    full[y0:y1, x0:x1] = inside
    return full


def overlay_on_photo(photo: Photo, saliency: Tensor, alpha: float = 0.5) -> Tensor:
    """(3, H0, W0) in [0, 1]: the photo blended with the jet map; outside a centre crop, the photo dimmed."""
    blended = overlay(photo.pixels.unsqueeze(0), map_to_photo(saliency, photo).unsqueeze(0), alpha)[0]
    if photo.cropped:
        x0, y0, x1, y1 = photo.crop
        dimmed = photo.pixels * 0.35
        dimmed[:, y0:y1, x0:x1] = blended[:, y0:y1, x0:x1]
        return dimmed
    return blended


def compose_figure(panels: Sequence[tuple[str, Tensor]], header: Sequence[str]) -> Image.Image:
    """Panels ``(label, (3, H0, W0) in [0, 1])`` in a grid of at most 4 columns, labelled, under ``header``."""
    height, width = panels[0][1].shape[1:]
    font = _font(max(12, min(48, min(width, height) // 14)))
    line = font.getbbox("Ag")[3] + 6
    columns = min(len(panels), MAX_COLUMNS)
    grid_rows = -(-len(panels) // columns)
    header_height = line * len(header) + GAP
    cell_height = line + height
    text_width = max(int(font.getlength(text)) for text in header) + 2 * GAP if header else 0
    figure_width = max(columns * width + (columns + 1) * GAP, text_width)
    figure = Image.new("RGB", (figure_width, header_height + grid_rows * (cell_height + GAP) + GAP), "white")
    draw = ImageDraw.Draw(figure)
    for i, text in enumerate(header):
        draw.text((GAP, GAP // 2 + i * line), text, fill="black", font=font)
    for index, (label, pixels) in enumerate(panels):
        row, column = divmod(index, columns)
        x = GAP + column * (width + GAP)
        y = header_height + GAP + row * (cell_height + GAP)
        draw.text((x, y), label, fill="black", font=font)
        figure.paste(_to_pil(pixels), (x, y + line))
    return figure


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


def explain_files(
    model,
    image_paths: Sequence[str | Path],
    explainers: Sequence[str],
    out_dir: str | Path,
    reference_paths: Sequence[str | Path] = (),
    image_size: int = DEFAULT_IMAGE_SIZE,
    alpha: float = 0.5,
    preprocess: str = "resize",
) -> list[Path]:
    """Write ``<out_dir>/<stem>.png`` (photo | one overlay per explainer); returns the written paths."""
    device = next(model.parameters()).device
    photos = [read_photo(path, image_size, preprocess) for path in image_paths]  # all decoded before writing
    refs = [read_photo(path, image_size, preprocess) for path in reference_paths]
    images = torch.stack([p.model_input for p in photos]).to(device)
    with torch.no_grad():
        feature_maps = model.forward_features(images)
        references, scores = None, None
        if refs:
            support = model.embed(model.forward_features(torch.stack([r.model_input for r in refs]).to(device)))
            references = support.unsqueeze(0).expand(images.shape[0], -1, -1)  # (B, N, D): one class
            scores = mean_similarity(model.embed(feature_maps), references, model.similarity).float().cpu()
    maps = {
        name: EXPLAINERS[name](model)(images, references, feature_maps=feature_maps).float().cpu()
        for name in explainers
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (photo, stem) in enumerate(zip(photos, output_names(image_paths))):
        panels = [("image", photo.pixels)] + [(name, overlay_on_photo(photo, maps[name][i], alpha)) for name in maps]
        target = out / f"{stem}.png"
        save_png(compose_figure(panels, figure_header(photo, model.similarity, len(refs), scores, i)), target)
        written.append(target)
    return written


def figure_header(photo: Photo, similarity: str, num_references: int, scores: Tensor | None, index: int) -> list[str]:
    """The lines above a figure: file, decision score, and what part of the photo the model saw."""
    height, width = photo.pixels.shape[1:]
    lines = [f"{photo.path.name} ({width} x {height})"]
    if scores is None:
        lines.append("no references: reference-free maps of the embedding itself")
    else:
        plural = "s" if num_references != 1 else ""
        lines.append(f"decision score {scores[index]:.4f} = mean {similarity} similarity to "
                     f"{num_references} reference{plural}")
    if photo.cropped:
        lines.append(f"the model saw the centre crop {photo.crop} only (x0, y0, x1, y1); outside it is dimmed")
    return lines


def checkpoint_image_size(ckpt_path: str | Path) -> int | None:
    """The input size the checkpoint's model was trained at (its data module's ``image_size``)."""
    size = datamodule_arguments(read_checkpoint(ckpt_path)).get("image_size")
    return int(size) if size else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fam-explain", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by fam-train / train.py")
    parser.add_argument("--images", nargs="+", required=True, help="image files to explain")
    parser.add_argument("--references", nargs="*", default=[], help="support images of the class to explain against")
    parser.add_argument("--explainers", nargs="+", default=["fam"], choices=list(EXPLAINERS))
    parser.add_argument("--out", default="explanations", help="output folder")
    parser.add_argument("--image_size", type=int, default=None,
                        help=f"model input side (default: the checkpoint's data image_size, else {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--preprocess", choices=PREPROCESSING, default="resize",
                        help="resize: the whole image (as the data modules); center_crop: the centred square")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    parser.add_argument("--model_class", default=None, help="override the checkpoint's model class (dotted path)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.references:
        needing = [name for name in args.explainers if EXPLAINERS[name].needs_references]
        if needing:
            parser.error(
                f"explainer(s) {', '.join(needing)} explain a similarity decision and need --references "
                "(support images of the class); without them only "
                f"{', '.join(n for n, c in EXPLAINERS.items() if not c.needs_references)} can run"
            )
    if not Path(args.ckpt_path).is_file():
        parser.error(f"checkpoint not found: {args.ckpt_path}")
    for path in [*args.images, *args.references]:
        if not Path(path).is_file():
            parser.error(f"image file not found: {path}")
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image_size must be >= 1, got {args.image_size}")
    try:
        model = load_model(args.ckpt_path, args.model_class, args.device)
        size = args.image_size or checkpoint_image_size(args.ckpt_path) or DEFAULT_IMAGE_SIZE
        written = explain_files(
            model, args.images, args.explainers, args.out, args.references, size, args.alpha, args.preprocess
        )
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))
    print(f"wrote {len(written)} figure(s) to {args.out} (model input {size} x {size}, {args.preprocess})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
