"""Explain a trained model's decisions on image files: one PNG figure per image.

    fam-explain --ckpt_path logs/quickstart/version_0/checkpoints/last.ckpt \
        --images bird1.jpg bird2.jpg --references ref1.jpg ref2.jpg --reference_class Albatross \
        --explainers fam gradcam scorecam --out explanations
    fam-explain --ckpt_path logs/npid_synthetic/version_0/checkpoints/last.ckpt --images photo.png \
        --explainers fam gradcam --data.root /data/imagenet      # the model's own kNN decision

Which decision is explained (``--decision auto``, the default):

- with ``--references``: the images against the references' embeddings as
  one class's support set, the few-shot decision: each image's mean
  similarity to them (``--reference_class`` names the class in the figure);
- without references, a memory-bank model (NPID / MoCo): its own weighted kNN
  vote over the memory bank; the predicted class (named from the data
  module's class names) and its strongest voting neighbours are shown;
- without references, a retrieval model: its top-1 image of the data module's
  evaluation gallery, shown with its class;
- without references, a few-shot model (``--decision none``): only the
  reference-free explainers (grad_fam, score_fam, eigencam), which explain
  the embedding itself.

The model's own decisions need its data module (the bank's labels and
images, the gallery): it is rebuilt from the checkpoint, ``--config`` and
``--data.*`` (e.g. ``--data.root``) as in every ``fam-*`` tool.

The model class and its input size are read from the checkpoint
(``--model_class`` / ``--image_size`` / ``--data.image_size`` override them).
Each image goes to the model as the data modules feed it: the whole image
resized to the input size (``--preprocess resize``), ImageNet mean / std.
``--preprocess center_crop`` feeds the largest centred square instead; the map
then covers only that square, the rest of the photo is dimmed, and the figure
says so.

Each figure, ``<out>/<image stem>.png`` (written atomically), holds the photo
beside one overlay per explainer (the map upsampled bilinearly from the
model's input to the photo's pixels), the decision in words, the reference
image(s) of the decision, and a colour bar. Photos whose shorter side is
under 224 px are shown enlarged by a whole factor (each pixel a k x k block),
so that the text stays readable. A photo whose size or shape is far from the
checkpoint's training images gets a warning, in the figure and on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fam_lightning.console import quiet_lightning
from fam_lightning.datamodules.formats.cub import display_class_name
from fam_lightning.datamodules.formats.images import decode_rgb
from fam_lightning.explainers import EXPLAINERS
from fam_lightning.loading import build_datamodule, datamodule_arguments, load_model, read_checkpoint
from fam_lightning.io import atomic_write
from fam_lightning.similarity import mean_similarity
from fam_lightning.tools.common import (
    Overrides,
    ToolParser,
    add_checkpoint_arguments,
    check_writable_folder,
    model_family,
    parse_tool_args,
)
from fam_lightning.visualize import IMAGENET_MEAN, IMAGENET_STD, denormalize, jet, overlay

DEFAULT_IMAGE_SIZE = 84
PREPROCESSING = ("resize", "center_crop")
DECISIONS = ("auto", "references", "model", "none")
MAX_COLUMNS = 4
GAP = 8  # pixels between panels
MIN_DISPLAY_SIDE = 224  # photos with a shorter side are shown enlarged by a whole factor ...
MAX_DISPLAY_SIDE = 1024  # ... that keeps the longer side within this ...
MAX_FIGURE_WIDTH = 2560  # ... and a row of panels within this
MAX_REFERENCES_SHOWN = 4
WARNING_COLOUR = (190, 0, 0)
COLOUR_BAR_LABEL = "map value (each map scaled to [0, 1]):  0"
MIN_BAR = 128  # pixels of the colour bar at least


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

    def display_scale(self, max_long: int = MAX_DISPLAY_SIDE) -> int:
        """The whole factor the figure enlarges the photo by: 1, or enough for a 224 px shorter side
        while the longer side stays within ``max_long``."""
        short, long = sorted(self.pixels.shape[1:])
        return max(1, min(math.ceil(MIN_DISPLAY_SIDE / max(1, short)), max_long // max(1, long)))

    def for_display(self, max_long: int = MAX_DISPLAY_SIDE) -> Photo:
        """The photo enlarged by :meth:`display_scale` (nearest neighbour), crop scaled with it."""
        k = self.display_scale(max_long)
        if k == 1:
            return self
        pixels = self.pixels.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)
        x0, y0, x1, y1 = self.crop
        return Photo(self.path, pixels, self.model_input, (x0 * k, y0 * k, x1 * k, y1 * k))


@dataclass
class Decision:
    """What each image is explained against, and how the figure words it.

    Attributes:
        references: (B, N, D) embeddings, or None (reference-free maps).
        weights: optional (B, N) weights of the references (kNN votes).
        lines: per image, the decision in words.
        reference_panels: per image, the reference images shown ``(label, (3, h, w) in [0, 1])``.
    """

    references: Tensor | None
    weights: Tensor | None
    lines: list[list[str]]
    reference_panels: list[list[tuple[str, Tensor]]] = field(default_factory=list)


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


# -- the figure -------------------------------------------------------------------------------
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


# -- the decisions, per family ------------------------------------------------------------------
def reference_decision(
    model: Any, embeddings: Tensor, refs: Sequence[Photo], class_name: str | None = None
) -> Decision:
    """The few-shot decision: each image's mean similarity to the references, one class's support set."""
    device = embeddings.device
    with torch.no_grad():
        support = model.embed(model.forward_features(torch.stack([r.model_input for r in refs]).to(device)))
        references = support.unsqueeze(0).expand(embeddings.shape[0], -1, -1)  # (B, N, D): one class
        scores = mean_similarity(embeddings, references, model.similarity).float().cpu()
    count = len(refs)
    of_class = f"the {count} support image{'s' if count != 1 else ''} of class {class_name!r}" if class_name else (
        f"{count} reference image{'s' if count != 1 else ''} (one class's supports)"
    )
    family = model_family(model)
    note = {
        "memory bank": "(the user's references: this model itself decides by a kNN vote over its memory bank; "
                       "run without --references to explain that)",
        "retrieval": "(the user's references: this model itself retrieves its top-1 gallery image; "
                     "run without --references to explain that)",
    }.get(family)
    lines = []
    for score in scores.tolist():
        text = [f"decision score {score:.4f} = mean {model.similarity} similarity to {of_class}"]
        lines.append(text + ([note] if note else []))
    panels = [(f"support {i + 1}: {r.path.name}", r.pixels) for i, r in enumerate(refs)]
    return Decision(references, None, lines, [panels] * embeddings.shape[0])


def knn_decision(model: Any, datamodule: Any, embeddings: Tensor) -> Decision:
    """A memory-bank model's own decision: its weighted kNN vote over the bank; the strongest voters shown."""
    model.attach_datamodule(datamodule)
    model.on_validation_epoch_start()  # the model's own kNN index over its bank (labels from the data module)
    with torch.no_grad():
        scores, rows, votes = model.knn(embeddings)  # (B, C), (B, K), (B, K)
    predicted = scores.argmax(1)
    weights = votes * (model.bank.labels[rows] == predicted.unsqueeze(1))  # the voters for the predicted class
    names = class_names(datamodule, "train")
    k = rows.shape[1]
    temperature = model.hparams.get("knn_temperature")
    lines, panels = [], []
    for i in range(embeddings.shape[0]):
        label = int(predicted[i])
        share = float(scores[i, label] / scores[i].sum().clamp_min(1e-12))
        voters = int((weights[i] > 0).sum())
        lines.append([
            f"decision: class {_class(names, label)} by a weighted kNN vote of the {k} nearest memory-bank "
            f"images (T = {temperature}): {share:.0%} of the vote, {voters} of the {k} neighbours in the class",
            "maps: the similarity to those neighbours, weighted by their votes",
        ])
        strongest = weights[i].argsort(descending=True)[:MAX_REFERENCES_SHOWN]
        strongest = strongest[weights[i, strongest] > 0]
        images = _shown(datamodule, datamodule.train_images(rows[i, strongest].cpu())) if len(strongest) else []
        panels.append([
            (f"vote {float(weights[i, j]):.3g}", image) for j, image in zip(strongest.tolist(), images)
        ])
    references = model.bank.bank[rows].to(embeddings.dtype)
    return Decision(references, weights.to(embeddings.dtype), lines, panels)


def retrieval_decision(model: Any, datamodule: Any, embeddings: Tensor) -> Decision:
    """A retrieval model's own decision: its top-1 image of the data module's evaluation gallery."""
    datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    gallery_loader = loaders[0] if isinstance(loaders, Sequence) else loaders
    gallery, labels, indices = [], [], []
    with torch.no_grad():
        for batch in gallery_loader:
            gallery.append(model.embed(model.forward_features(batch["image"].to(embeddings.device))))
            labels.append(batch["label"])
            indices.append(batch["index"])
    gallery_t, labels_t, indices_t = torch.cat(gallery), torch.cat(labels), torch.cat(indices)
    cosine = F.normalize(embeddings.float(), dim=1) @ F.normalize(gallery_t.float(), dim=1).T  # (B, G)
    best, top1 = cosine.max(1)
    names = class_names(datamodule, "test")
    images = _shown(datamodule, datamodule.images_at(indices_t[top1.cpu()]))
    lines, panels = [], []
    for i in range(embeddings.shape[0]):
        label = int(labels_t[top1[i]])
        lines.append([
            f"decision: retrieves gallery image {int(indices_t[top1[i]])} of class {_class(names, label)}, "
            f"the top-1 of {len(gallery_t)} (cosine {float(best[i]):.4f})",
            "maps: the similarity to that image's embedding",
        ])
        panels.append([(f"top-1: {_class(names, label)}", images[i])])
    return Decision(gallery_t[top1].unsqueeze(1), None, lines, panels)


def no_decision(model: Any, count: int) -> Decision:
    family = model_family(model)
    how = {
        "few-shot": "few-shot models decide by the mean similarity to a class's supports: pass --references",
        "memory bank": "this model decides by a kNN vote over its memory bank: --decision model explains it",
        "retrieval": "this model retrieves its top-1 gallery image: --decision model explains it",
    }.get(family, "pass --references to explain a similarity decision")
    return Decision(None, None, [["no decision: reference-free maps of the embedding itself", f"({how})"]] * count)


def class_names(datamodule: Any, split: str) -> list[str] | None:
    """Display names of a data module's classes in label order, where it has them."""
    candidates = []
    for getter in (
        lambda: datamodule.split_index(split).class_names,  # ImageNet layout (contrastive)
        lambda: datamodule._split(split).dataset.classes,  # CUB retrieval
        lambda: datamodule._image_set(split).classes,  # CUB few-shot
        lambda: datamodule.class_names,
        lambda: datamodule.classes,
    ):
        try:
            candidates = list(getter())
        except Exception:  # the attribute path does not exist for this data module
            continue
        if candidates and all(isinstance(name, str) for name in candidates):
            return [display_class_name(name) for name in candidates]
    return None


def _class(names: list[str] | None, label: int) -> str:
    return f"{names[label]!r}" if names and 0 <= label < len(names) else str(label)


def _shown(datamodule: Any, images: Tensor) -> list[Tensor]:
    """A data module's normalised images -> [0, 1] pixels for the figure."""
    mean = getattr(datamodule, "mean", IMAGENET_MEAN)
    std = getattr(datamodule, "std", IMAGENET_STD)
    return list(denormalize(images.float().cpu(), mean, std))


def choose_decision(decision: str, model: Any, has_references: bool) -> str:
    """``auto`` -> the decision explained: references, the model's own (memory bank / retrieval), or none."""
    if decision != "auto":
        return decision
    if has_references:
        return "references"
    return "model" if model_family(model) in ("memory bank", "retrieval") else "none"


def make_decision(
    kind: str, model: Any, embeddings: Tensor, refs: Sequence[Photo], datamodule: Any = None,
    class_name: str | None = None,
) -> Decision:
    if kind == "references":
        return reference_decision(model, embeddings, refs, class_name)
    if kind == "none":
        return no_decision(model, embeddings.shape[0])
    family = model_family(model)
    decide = {"memory bank": knn_decision, "retrieval": retrieval_decision}.get(family)
    if decide is not None:
        try:
            return decide(model, datamodule, embeddings)
        except FileNotFoundError as err:  # the data is read when first needed
            raise ValueError(f"{err}; {NEEDS_DATA}") from err
    raise ValueError(
        f"--decision model: a {family or type(model).__name__} model has no decision of its own on a single "
        "image (few-shot models compare with a class's supports): pass --references"
    )


# -- does the photo look like the training data? ---------------------------------------------------
GEOMETRY_SAMPLE = 16  # image headers read to learn the size of a real data set's images


def training_geometry(data_arguments: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) of the checkpoint's training images, typical (median) ones; None if unknown.

    The synthetic data sets say it in their arguments; for a real ``root`` (CUB or ImageNet layout) the
    headers of up to 16 of its images are read (nothing decoded); a folder that is not there gives None.
    """
    root = data_arguments.get("root")
    if root is None:
        side = data_arguments.get("synthetic_image_size")
        return (int(side), int(side)) if side else None
    paths = _sample_images(Path(root))
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, SyntaxError):
            continue
    if not sizes:
        return None
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    return widths[len(widths) // 2], heights[len(heights) // 2]


def _sample_images(root: Path) -> list[Path]:
    """Up to :data:`GEOMETRY_SAMPLE` image files of a CUB-layout (images.txt) or ImageNet-layout (train/) root."""
    listing = root / "images.txt"
    if listing.is_file():
        lines = [line.split(maxsplit=1) for line in listing.read_text(encoding="utf-8-sig").splitlines()]
        paths = [root / "images" / fields[1].strip() for fields in lines if len(fields) == 2]
        step = max(1, len(paths) // GEOMETRY_SAMPLE)
        return paths[::step][:GEOMETRY_SAMPLE]
    train = root / "train"
    if not train.is_dir():
        return []
    found: list[Path] = []
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        found += sorted(p for p in folder.iterdir() if p.is_file())[:2]
        if len(found) >= GEOMETRY_SAMPLE:
            break
    return found[:GEOMETRY_SAMPLE]


def look_warnings(photo: Photo, model_size: int, geometry: tuple[int, int] | None) -> list[str]:
    """Why the photo may not look like what the model was trained on (size, shape)."""
    height, width = photo.pixels.shape[1:]
    out = []
    if geometry is not None:
        gw, gh = geometry
        aspect, trained_aspect = width / height, gw / gh
        if max(aspect / trained_aspect, trained_aspect / aspect) > 1.5:
            out.append(
                f"warning: the photo's shape ({width} x {height}, aspect {aspect:.2f}) is unlike the training "
                f"images' ({gw} x {gh}): {'squashed' if photo.crop[0] == 0 else 'cropped'} to the model's square input"
            )
        side, trained_side = min(width, height), min(gw, gh)
        if side < trained_side / 2 or side > trained_side * 4:
            out.append(
                f"warning: the photo ({width} x {height}) is at another scale than the training images "
                f"({gw} x {gh}): objects may not look like the ones the model learned"
            )
    if min(width, height) < model_size:
        out.append(
            f"warning: the photo ({width} x {height}) is smaller than the model's {model_size} x {model_size} "
            "input: it is upsampled, and fine detail is missing"
        )
    return out


def figure_header(photo: Photo, decision_lines: Sequence[str], scale: int = 1) -> list[str]:
    """The lines above a figure: file (and display ``scale``), the decision, what part of the photo the model saw."""
    height, width = photo.pixels.shape[1:]
    shown = f", shown {scale}x" if scale > 1 else ""
    lines = [f"{photo.path.name} ({width} x {height}{shown})", *decision_lines]
    if photo.cropped:
        lines.append(f"the model saw the centre crop {photo.crop} only (x0, y0, x1, y1); outside it is dimmed")
    return lines


# -- the run -------------------------------------------------------------------------------------
def explain_files(
    model,
    image_paths: Sequence[str | Path],
    explainers: Sequence[str],
    out_dir: str | Path,
    reference_paths: Sequence[str | Path] = (),
    image_size: int = DEFAULT_IMAGE_SIZE,
    alpha: float = 0.5,
    preprocess: str = "resize",
    decision: str = "auto",
    datamodule: Any = None,
    reference_class: str | None = None,
    data_arguments: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``<out_dir>/<stem>.png`` (photo | one overlay per explainer, decision, references); returns the paths.

    ``decision``: see :data:`DECISIONS` and the module docstring; ``datamodule``: needed for the model's own
    decision (memory bank, retrieval); ``data_arguments``: the checkpoint's data arguments (training image size).
    """
    device = next(model.parameters()).device
    photos = [read_photo(path, image_size, preprocess) for path in image_paths]  # all decoded before writing
    refs = [read_photo(path, image_size, preprocess) for path in reference_paths]
    kind = choose_decision(decision, model, bool(refs))
    if kind == "references" and not refs:
        raise ValueError("--decision references needs --references (support images of one class)")
    needing = [name for name in explainers if EXPLAINERS[name].needs_references]
    if kind == "none" and needing:
        raise ValueError(
            f"explainer(s) {', '.join(needing)} explain a similarity decision and need one "
            f"{no_decision(model, 1).lines[0][1]}; without a decision only "
            f"{', '.join(n for n, c in EXPLAINERS.items() if not c.needs_references)} can run"
        )
    images = torch.stack([p.model_input for p in photos]).to(device)
    with torch.no_grad():
        feature_maps = model.forward_features(images)
        embeddings = model.embed(feature_maps)
    chosen = make_decision(kind, model, embeddings, refs, datamodule, reference_class)
    maps = {
        name: EXPLAINERS[name](model)(images, chosen.references, chosen.weights, feature_maps=feature_maps)
        .float().cpu()
        for name in explainers
    }
    geometry = training_geometry(data_arguments or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (photo, stem) in enumerate(zip(photos, output_names(image_paths))):
        max_long = min(MAX_DISPLAY_SIDE, MAX_FIGURE_WIDTH // min(1 + len(maps), MAX_COLUMNS))
        shown = photo.for_display(max_long)
        panels = [("image", shown.pixels)] + [(name, overlay_on_photo(shown, maps[name][i], alpha)) for name in maps]
        warnings = look_warnings(photo, image_size, geometry)
        for warning in warnings:
            print(f"{photo.path}: {warning}", file=sys.stderr)
        references = chosen.reference_panels[i] if chosen.reference_panels else []
        header = figure_header(photo, chosen.lines[i], photo.display_scale(max_long))
        target = out / f"{stem}.png"
        save_png(compose_figure(panels, header, references, warnings), target)
        written.append(target)
    return written


def checkpoint_image_size(ckpt_path: str | Path) -> int | None:
    """The input size the checkpoint's model was trained at (its data module's ``image_size``)."""
    size = datamodule_arguments(read_checkpoint(ckpt_path)).get("image_size")
    return int(size) if size else None


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="fam-explain", description=__doc__.splitlines()[0])
    add_checkpoint_arguments(parser, data=False)
    parser.add_argument("--images", nargs="+", required=True, help="image files to explain")
    parser.add_argument("--references", nargs="*", default=[], help="support images of the class to explain against")
    parser.add_argument("--reference_class", default=None, help="the references' class name, shown in the figure")
    parser.add_argument("--decision", choices=DECISIONS, default="auto",
                        help="auto: the references' if given, else the model's own (memory bank: kNN vote; "
                        "retrieval: top-1 gallery image), else none (reference-free maps)")
    parser.add_argument("--explainers", nargs="+", default=["fam"], choices=list(EXPLAINERS))
    parser.add_argument("--out", default="explanations", help="output folder")
    parser.add_argument("--image_size", type=int, default=None,
                        help=f"model input side (default: --data.image_size, the checkpoint's data image_size, "
                        f"else {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--preprocess", choices=PREPROCESSING, default="resize",
                        help="resize: the whole image (as the data modules); center_crop: the centred square")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_lightning()
    parser = build_parser()
    args, overrides = parse_tool_args(parser, sys.argv[1:] if argv is None else argv)
    has_refs = bool(args.references)
    if not Path(args.ckpt_path).is_file():
        parser.error(f"checkpoint not found: {args.ckpt_path}")
    for path in [*args.images, *args.references]:
        if not Path(path).is_file():
            parser.error(f"image file not found: {path}")
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image_size must be >= 1, got {args.image_size}")
    out = Path(args.out)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; expected a folder for the figures (or a new name)")
        check_writable_folder(out, f"--out {out}")
        checkpoint = read_checkpoint(args.ckpt_path)
        data_arguments = {**datamodule_arguments(checkpoint), **overrides.data}
        model = load_model(args.ckpt_path, overrides.model_class, args.device, overrides.model)
        kind = choose_decision(args.decision, model, has_refs)
        datamodule = model_datamodule(checkpoint, overrides) if kind == "model" else None
        size = args.image_size or int(data_arguments.get("image_size") or 0) or DEFAULT_IMAGE_SIZE
        written = explain_files(
            model, args.images, args.explainers, out, args.references, size, args.alpha, args.preprocess,
            kind, datamodule, args.reference_class, data_arguments,
        )
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))
    print(f"wrote {len(written)} figure(s) to {args.out} (model input {size} x {size}, {args.preprocess})")
    return 0


def model_datamodule(checkpoint: dict[str, Any], overrides: Overrides) -> Any:
    """The checkpoint's data module (with ``--config`` / ``--data.*``), for the model's own decision."""
    try:
        return build_datamodule(checkpoint, overrides.data_class, {**overrides.data, "num_workers": 0})
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"{err}; {NEEDS_DATA}") from err


NEEDS_DATA = (
    "the model's own decision needs its data module (the memory bank's labels and images, or the gallery): "
    "pass --data.root <the checkpoint's data>, or --references / --decision none"
)
