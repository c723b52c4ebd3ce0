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

Layout: :mod:`~fam_lightning.tools.explain_photo` (reading a photo, its overlay, the look warnings),
:mod:`~fam_lightning.tools.explain_decisions` (the decision per family),
:mod:`~fam_lightning.tools.explain_figure` (drawing the figure); this module is the command and the run,
and every name stays importable from here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fam_lightning.console import quiet_lightning
from fam_lightning.explainers import EXPLAINERS
from fam_lightning.loading import build_datamodule, datamodule_arguments, load_model, read_checkpoint
from fam_lightning.tools.common import (
    Overrides,
    ToolParser,
    add_checkpoint_arguments,
    check_writable_folder,
    parse_tool_args,
)
from fam_lightning.tools.explain_decisions import (  # noqa: F401  (re-exported: the names fam-explain always had)
    DECISIONS,
    NEEDS_DATA,
    Decision,
    choose_decision,
    class_names,
    knn_decision,
    make_decision,
    no_decision,
    reference_decision,
    retrieval_decision,
)
from fam_lightning.tools.explain_figure import (  # noqa: F401  (re-exported: the names fam-explain always had)
    COLOUR_BAR_LABEL,
    GAP,
    MAX_COLUMNS,
    MAX_FIGURE_WIDTH,
    MAX_REFERENCES_SHOWN,
    MIN_BAR,
    WARNING_COLOUR,
    compose_figure,
    figure_header,
    output_names,
    save_png,
)
from fam_lightning.tools.explain_photo import (  # noqa: F401  (re-exported: the names fam-explain always had)
    DEFAULT_IMAGE_SIZE,
    GEOMETRY_SAMPLE,
    MAX_DISPLAY_SIDE,
    MIN_DISPLAY_SIDE,
    PREPROCESSING,
    Photo,
    look_warnings,
    map_to_photo,
    overlay_on_photo,
    read_photo,
    training_geometry,
)


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
