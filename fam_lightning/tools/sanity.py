"""Sanity checks of explanations (Adebayo et al. 2018): do the maps depend on what the model learned?

    fam-sanity --ckpt_path logs/.../last.ckpt [--explainers fam gradcam] [--batches 5] [--out sanity.csv]
    fam-sanity --ckpt_path trained.ckpt --mode data --shuffled_ckpt_path shuffled.ckpt

Works on every family; the model and data module classes (and the data
module's arguments) are read from the checkpoint. The explained decisions are
the trained model's own, on the validation data: the explanation inputs its
own validation steps return (:mod:`fam_lightning.tools.sanity_decisions`):

- few-shot: each query against the support images of the class the model predicted;
- memory bank: each image against the bank entries of the predicted class among
  its K nearest, weighted by their kNN votes;
- retrieval: each query against its top-1 gallery image.

``--mode model`` (default), cascading randomisation: the layers are
re-initialised from the top (the projection head if any, then the backbone's
last block first), each with its own ``reset_parameters()``, cumulatively,
and after every step the same decisions are explained again.
``--mode data``: the same decisions explained by a model of the same
architecture trained on shuffled labels (``--shuffled_ckpt_path``).

For every step and explainer the table gives the Spearman rank correlation
(:func:`fam_lightning.metrics.rank.spearman`) between the trained model's maps and the randomised (or shuffled-label)
model's maps, averaged over images; an explanation that stays highly
correlated while the weights it explains are destroyed is not explaining the
model.

What stays fixed and what is recomputed: the decision (which query, which
reference images, their kNN vote weights) is the trained model's; every
embedding is recomputed by the model under test. The trained maps use the
references the trained model decided with (support embeddings, memory-bank
entries, gallery embeddings); a randomised model has no bank or gallery of
its own, so its references are the same reference images embedded by the
randomised network, and its maps explain its own score for the same decision.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import io
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from fam_lightning.console import quiet_lightning
from fam_lightning.explainers import EXPLAINERS
from fam_lightning.loading import build_datamodule, import_class, load_model, read_checkpoint
from fam_lightning.io import atomic_write
from fam_lightning.metrics.rank import spearman
from fam_lightning.tools.common import Overrides, ToolParser, add_checkpoint_arguments, parse_tool_args
from fam_lightning.tools.sanity_decisions import Decisions, model_decisions

# deprecated flags -> the data module argument they set (--data.<argument> is the flag now)
DATA_ALIASES = {"data_dir": "data_dir", "root": "root", "image_size": "image_size"}


# -- what to randomise --------------------------------------------------------------------
def randomisation_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules to re-initialise, top first: projection head, then the backbone in reverse order."""
    def resettable(prefix: str, root: nn.Module) -> list[tuple[str, nn.Module]]:
        found = [
            (f"{prefix}.{name}" if name else prefix, module)
            for name, module in root.named_modules()
            if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))
        ]
        return found[::-1]

    units: list[tuple[str, nn.Module]] = []
    projection = getattr(model, "projection", None)
    if isinstance(projection, nn.Module):
        units += resettable("projection", projection)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(model).__name__} has no `backbone` module to randomise")
    units += resettable("backbone", backbone)
    return units


# -- the decisions to explain ---------------------------------------------------------------
def collect_decisions(model: Any, datamodule: Any, batches: int) -> list[Decisions]:
    """The trained model's decisions on the first ``batches`` validation batches (episodes), from its own
    validation steps' explanation inputs (:mod:`fam_lightning.tools.sanity_decisions`)."""
    datamodule.setup("validate")
    with torch.no_grad():
        return list(progress(model_decisions(model, datamodule, batches), "collecting decisions", total=batches))


# -- maps -----------------------------------------------------------------------------------
def explain_decisions(
    model: Any, decisions: Decisions, explainers: dict[str, Any], reembed: bool
) -> dict[str, Tensor]:
    """(B, H, W) maps per explainer; ``reembed``: references embedded by ``model`` from their images."""
    with torch.no_grad():
        feature_maps = model.forward_features(decisions.images)
        references = decisions.references
        if reembed:
            references = model.embed(model.forward_features(decisions.reference_images))[decisions.reference_rows]
    return {
        name: explainer(decisions.images, references, decisions.reference_weights, feature_maps=feature_maps)
        .float().cpu()
        for name, explainer in explainers.items()
    }


def correlation_rows(
    step: str, originals: list[dict[str, Tensor]], others: list[dict[str, Tensor]]
) -> list[dict[str, Any]]:
    """One row per explainer: mean / std Spearman over images, constant maps counted apart."""
    rows = []
    for explainer in originals[0]:
        rho = torch.cat([spearman(a[explainer], b[explainer]) for a, b in zip(originals, others)])
        valid = rho[~rho.isnan()]
        rows.append({
            "layer": step,
            "explainer": explainer,
            "spearman_mean": float(valid.mean()) if valid.numel() else math.nan,
            "spearman_std": float(valid.std()) if valid.numel() > 1 else math.nan,
            "num_maps": int(valid.numel()),
            "num_constant": int(rho.numel() - valid.numel()),
        })
    return rows


def run(args: argparse.Namespace, overrides: Overrides | None = None) -> list[dict[str, Any]]:
    """The sanity check's rows (layer / step, explainer, Spearman statistics).

    ``overrides``: ``--config`` / ``--data.*`` / ``--model.*`` (default: ``args.model_class`` / ``args.data_class``).
    """
    if overrides is None:
        overrides = Overrides(model_class=args.model_class, data_class=args.data_class)
    torch.manual_seed(args.seed)
    model = load_model(args.ckpt_path, overrides.model_class, args.device, overrides.model)
    checkpoint = read_checkpoint(args.ckpt_path)
    datamodule = build_datamodule(checkpoint, overrides.data_class, data_overrides(checkpoint, overrides))
    shuffled = None
    if args.mode == "data":  # checked before any explaining: a mismatch costs seconds, not the whole run
        shuffled = load_model(args.shuffled_ckpt_path, overrides.model_class, args.device, overrides.model)
        check_same_architecture(model, shuffled)
    decisions = collect_decisions(model, datamodule, args.batches)
    explainers = {name: EXPLAINERS[name](model) for name in args.explainers}
    originals = [explain_decisions(model, d, explainers, reembed=False)
                 for d in progress(decisions, "explaining the trained model")]

    if shuffled is not None:
        others = {name: EXPLAINERS[name](shuffled) for name in args.explainers}
        maps = [explain_decisions(shuffled, d, others, reembed=True)
                for d in progress(decisions, "explaining the shuffled-label model")]
        return correlation_rows("shuffled labels", originals, maps)

    rows = []
    steps = progress(randomisation_order(model), "randomising layers", unit="layer")
    for name, module in steps:
        steps.set_postfix_str(name, refresh=False)
        module.reset_parameters()  # cumulative: every earlier (higher) layer stays random
        maps = [explain_decisions(model, d, explainers, reembed=True) for d in decisions]
        rows += correlation_rows(name, originals, maps)
    return rows


def check_same_architecture(model: nn.Module, shuffled: nn.Module) -> None:
    """Raise ``ValueError`` naming the first difference if ``shuffled`` is not ``model``'s architecture."""
    if type(shuffled) is not type(model):
        raise ValueError(
            f"--shuffled_ckpt_path holds a {type(shuffled).__name__}, the trained checkpoint a "
            f"{type(model).__name__}: the data randomisation test compares one architecture"
        )
    names = [getattr(m, "hparams", {}).get("backbone") for m in (model, shuffled)]
    if all(isinstance(n, str) for n in names) and names[0] != names[1]:
        raise ValueError(
            f"--shuffled_ckpt_path has backbone {names[1]!r}, the trained checkpoint {names[0]!r}: the data "
            "randomisation test compares one architecture trained on shuffled labels"
        )
    trained = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    other = {name: tuple(value.shape) for name, value in shuffled.state_dict().items()}
    for name in sorted(trained.keys() | other.keys()):
        if trained.get(name) != other.get(name):
            raise ValueError(
                f"--shuffled_ckpt_path is another architecture than the trained checkpoint: {name} is "
                f"{other.get(name, 'missing')} there, {trained.get(name, 'missing')} in the trained model; "
                "the data randomisation test compares one architecture trained on shuffled labels"
            )


def progress(items: Iterable[Any], what: str, unit: str = "batch", total: int | None = None) -> tqdm:
    """A progress bar on stderr over ``items`` (the steps of a run that can take minutes)."""
    return tqdm(items, desc=what, unit=unit, total=total, dynamic_ncols=True, leave=False, file=sys.stderr)


def data_overrides(checkpoint: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Data module arguments from ``--config`` / ``--data.*``; single-process loading, one episode per batch."""
    config = {**overrides.data, "num_workers": 0}
    if "episodes_per_batch" in datamodule_signature(checkpoint, overrides.data_class):
        config["episodes_per_batch"] = 1  # decisions are explained one episode at a time
    return config


def datamodule_signature(checkpoint: dict[str, Any], data_class: str | None) -> set[str]:
    """Argument names of the data module the sanity check will build."""
    dotted = data_class or (checkpoint.get("datamodule_hyper_parameters") or {}).get("_class_path")
    if dotted is None:
        return set()
    return set(inspect.signature(import_class(dotted)).parameters)


# -- output ---------------------------------------------------------------------------------
def markdown_table(rows: list[dict[str, Any]], explainers: list[str]) -> str:
    """One row per randomisation step, one column per explainer (mean Spearman)."""
    lines = ["| randomised down to | " + " | ".join(explainers) + " |", "|---" * (len(explainers) + 1) + "|"]
    for layer in dict.fromkeys(row["layer"] for row in rows):
        values = {row["explainer"]: row["spearman_mean"] for row in rows if row["layer"] == layer}
        lines.append(f"| {layer} | " + " | ".join(f"{values[e]:.3f}" for e in explainers) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), newline=""))


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="fam-sanity", description=__doc__.splitlines()[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--mode", choices=("model", "data"), default="model",
                        help="model: cascading randomisation of the weights; data: a shuffled-label model")
    parser.add_argument("--shuffled_ckpt_path", default=None,
                        help="--mode data: the same architecture trained on shuffled labels")
    parser.add_argument("--explainers", nargs="+", default=list(EXPLAINERS), choices=list(EXPLAINERS),
                        help="default: all ten")
    parser.add_argument("--batches", "--episodes", dest="batches", type=int, default=5,
                        help="validation batches (few-shot: episodes) whose decisions are explained")
    parser.add_argument("--data_dir", default=None, help="deprecated: --data.data_dir")
    parser.add_argument("--root", default=None, help="deprecated: --data.root")
    parser.add_argument("--image_size", type=int, default=None, help="deprecated: --data.image_size")
    parser.add_argument("--data_class", default=None, help="the data module class (dotted path), overriding the "
                        "checkpoint's and the config's (also --data.class_path)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation")
    parser.add_argument("--out", default=None, help="CSV file for the per-layer results")
    parser.add_argument("--plot", default=None, metavar="PNG", help="PNG of the curves: Spearman vs the randomised "
                        "depth, one line per explainer (Adebayo et al. 2018, Fig. 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_lightning()
    parser = build_parser()
    args, overrides = parse_tool_args(parser, sys.argv[1:] if argv is None else argv, DATA_ALIASES)
    overrides.data_class = args.data_class or overrides.data_class
    if args.batches < 1:
        parser.error(f"--batches must be >= 1, got {args.batches}")
    if args.mode == "data" and not args.shuffled_ckpt_path:
        parser.error("--mode data needs --shuffled_ckpt_path (a checkpoint of the same model trained on shuffled labels)")
    for path in (args.ckpt_path, args.shuffled_ckpt_path):
        if path is not None and not Path(path).is_file():
            parser.error(f"checkpoint not found: {path}")
    if args.out and Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder; expected a CSV file path")
    try:
        rows = run(args, overrides)
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))
    what = "a shuffled-label model" if args.mode == "data" else "cascading randomisation (top layer first)"
    print(f"Spearman rank correlation of maps, trained vs {what}; lower is better, ~0 = the maps depend on "
          "the weights")
    print(markdown_table(rows, args.explainers))
    if args.out:
        write_csv(rows, Path(args.out))
        print(f"wrote {args.out}")
    if args.plot:  # issue 19: the table as curves
        from fam_lightning.visualize.plots import sanity_curves_figure, save_figure

        print(f"wrote {save_figure(sanity_curves_figure(rows), args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
