"""Explain a trained model's decisions on image files: one PNG heatmap overlay per image and explainer.

    python explain.py --ckpt_path logs/quickstart/version_0/checkpoints/last.ckpt \
        --images bird1.jpg bird2.jpg --references ref1.jpg ref2.jpg \
        --explainers fam gradcam scorecam --out explanations

With ``--references`` the images are explained against the references' embeddings
as one class's support set: the decision score is each image's mean
similarity to them. Without references only reference-free explainers
(grad_fam, score_fam, eigencam), which explain the embedding itself, can run.
Images are resized to ``--image_size`` squared and normalised with the
ImageNet mean / std, as the data modules do. Each overlay is written to
``<out>/<image stem>_<explainer>.png`` atomically.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image

from datamodules.cub import IMAGENET_MEAN, IMAGENET_STD, load_resized_image
from fam_lightning.explainers import EXPLAINERS
from fam_lightning.protocol import check_similarity_model
from fam_lightning.visualize import denormalize, overlay

DEFAULT_MODEL_CLASS = "fam_lightning.models.FewShotClassifier"


def import_class(dotted: str) -> type:
    """``package.module.Class`` -> the class."""
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"model class must be a dotted path such as {DEFAULT_MODEL_CLASS}, got {dotted!r}")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import model class {dotted!r}: {err}") from err


def load_model(ckpt_path: str | Path, model_class: str = DEFAULT_MODEL_CLASS, device: str | torch.device = "cpu"):
    """A protocol model from a Lightning checkpoint, in eval mode on ``device``."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    cls = import_class(model_class)
    model = cls.load_from_checkpoint(str(path), map_location=torch.device(device))
    return check_similarity_model(model.to(device).eval())


def load_images(paths: Sequence[str | Path], size: int, device: str | torch.device = "cpu") -> Tensor:
    """(B, 3, size, size) ImageNet-normalised images; errors name the file."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = []
    for path in paths:
        image, _ = load_resized_image(Path(path), size)  # FileNotFoundError / ValueError name the file
        images.append((image.float() / 255.0 - mean) / std)
    return torch.stack(images).to(device)


def save_png(image: Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] -> PNG, via a temporary file and ``os.replace`` (never a partial file)."""
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        save_image(image, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
    image_size: int = 84,
    alpha: float = 0.5,
) -> list[Path]:
    """Write ``<out_dir>/<stem>_<explainer>.png`` overlays; returns the written paths."""
    device = next(model.parameters()).device
    images = load_images(image_paths, image_size, device)
    with torch.no_grad():
        if reference_paths:
            support = model.embed(model.forward_features(load_images(reference_paths, image_size, device)))
            references = support.unsqueeze(0).expand(images.shape[0], -1, -1)  # (B, N, D): one class
        else:
            references = None  # reference-free explainers only: checked by the caller
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    background = denormalize(images.float())
    written = []
    for name in explainers:
        maps = EXPLAINERS[name](model)(images, references)
        for stem, tile in zip(output_names(image_paths), overlay(background, maps.float(), alpha)):
            target = out / f"{stem}_{name}.png"
            save_png(tile.cpu(), target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="Lightning checkpoint of a protocol model")
    parser.add_argument("--images", nargs="+", required=True, help="image files to explain")
    parser.add_argument("--references", nargs="*", default=[], help="support images of the class to explain against")
    parser.add_argument("--explainers", nargs="+", default=["fam"], choices=sorted(EXPLAINERS))
    parser.add_argument("--out", default="explanations", help="output folder")
    parser.add_argument("--image_size", type=int, default=84)
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    parser.add_argument("--model_class", default=DEFAULT_MODEL_CLASS, help="dotted path of the LightningModule")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

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
    try:
        model = load_model(args.ckpt_path, args.model_class, args.device)
    except Exception as err:  # a corrupt or foreign file fails in many ways: name it
        parser.error(f"cannot load checkpoint {args.ckpt_path} as {args.model_class}: {err}")
    try:
        written = explain_files(
            model, args.images, args.explainers, args.out, args.references, args.image_size, args.alpha
        )
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {len(written)} overlays to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
