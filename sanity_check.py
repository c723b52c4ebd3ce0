"""Sanity check of explanations (Adebayo et al. 2018): do the maps depend on the learned weights?

    python sanity_check.py --ckpt_path logs/.../last.ckpt [--config configs/quickstart.yaml] \
        [--explainers fam gradcam] [--episodes 5] [--out results/sanity.csv]

Explains the queries of a few validation episodes with the trained model, then
re-initialises the model's layers one after another from the top (the
projection head if any, then the backbone's last conv block first), each with
its own ``reset_parameters()``, cumulatively ("cascading randomisation"), and
explains the same queries again after each step. For every step and explainer
it reports the Spearman rank correlation between the trained and the
randomised model's maps, averaged over queries: an explanation that stays
highly correlated while the weights it explains are destroyed is not
explaining the model.

Each query is explained against the support images of the class the trained
model predicted, embedded by the (randomised) model under test, so the target
is that model's own decision score. Data: the ``data`` section of a
LightningCLI ``--config`` (``datamodules.FewShotDataModule`` arguments), with
``--data_dir`` / ``--image_size`` / ``--root`` overriding it; the synthetic
default otherwise.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn

from datamodules import FewShotDataModule
from explain import DEFAULT_MODEL_CLASS, load_model
from fam_lightning.explainers import EXPLAINERS


def average_ranks(values: Tensor) -> Tensor:
    """(B, n) -> (B, n) 0-based ranks per row: argsort twice, ties given their mean rank."""
    batch, count = values.shape
    order = values.argsort(dim=1, stable=True)
    ordinal = order.argsort(dim=1)  # rank of each element
    ordered = values.gather(1, order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # tie group of each sorted position
    positions = torch.arange(count, device=values.device, dtype=torch.float64).expand(batch, count)
    sums = torch.zeros(batch, count, device=values.device, dtype=torch.float64).scatter_add_(1, group, positions)
    sizes = torch.zeros_like(sums).scatter_add_(1, group, torch.ones_like(positions))
    mean_rank = (sums / sizes.clamp_min(1)).gather(1, group)  # in sorted order
    return mean_rank.gather(1, ordinal)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of (B, ...) a and b per sample -> (B,); NaN where a map is constant."""
    ra = average_ranks(a.flatten(1).double())
    rb = average_ranks(b.flatten(1).double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-300), math.nan)


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


def episode_maps(model: Any, batch: dict, predicted: Tensor, explainers: dict) -> dict[str, Tensor]:
    """Maps of the episode's queries against the support of the ``predicted`` classes, per explainer."""
    with torch.no_grad():
        out = model.episode_forward(batch)
    num_support = out["support"].shape[0] * out["support"].shape[1]
    references = out["support"][predicted]  # (Q, S, D)
    features = out["feature_maps"][num_support:]
    return {
        name: explainer(batch["query"], references, feature_maps=features).float().cpu()
        for name, explainer in explainers.items()
    }


def data_module(args: argparse.Namespace) -> FewShotDataModule:
    config: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        data = loaded.get("data") or {}
        config = dict(data.get("init_args", data if "class_path" not in data else {}))
    for key in ("data_dir", "image_size", "root"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    config["val_episodes"] = args.episodes
    config["num_workers"] = 0
    return FewShotDataModule(**config)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.manual_seed(args.seed)
    model = load_model(args.ckpt_path, args.model_class, args.device)
    explainers = {name: EXPLAINERS[name](model) for name in args.explainers}
    datamodule = data_module(args)
    datamodule.setup("validate")
    batches = [move_data_to_device(batch, model.device) for batch in datamodule.val_dataloader()][: args.episodes]

    originals, predictions = [], []
    for batch in batches:
        with torch.no_grad():
            predictions.append(model.episode_forward(batch)["scores"].argmax(1))
        originals.append(episode_maps(model, batch, predictions[-1], explainers))

    rows = []
    for name, module in randomisation_order(model):
        module.reset_parameters()  # cumulative: every earlier (higher) layer stays random
        correlations: dict[str, list[Tensor]] = {explainer: [] for explainer in explainers}
        for batch, predicted, original in zip(batches, predictions, originals):
            randomised = episode_maps(model, batch, predicted, explainers)
            for explainer in explainers:
                correlations[explainer].append(spearman(original[explainer], randomised[explainer]))
        for explainer, values in correlations.items():
            rho = torch.cat(values)
            valid = rho[~rho.isnan()]
            rows.append({
                "layer": name,
                "explainer": explainer,
                "spearman_mean": float(valid.mean()) if valid.numel() else math.nan,
                "spearman_std": float(valid.std()) if valid.numel() > 1 else math.nan,
                "num_maps": int(valid.numel()),
                "num_constant": int(rho.numel() - valid.numel()),
            })
    return rows


def markdown_table(rows: list[dict[str, Any]], explainers: list[str]) -> str:
    """One row per cumulative randomisation step, one column per explainer (mean Spearman)."""
    lines = ["| randomised down to | " + " | ".join(explainers) + " |", "|---" * (len(explainers) + 1) + "|"]
    for layer in dict.fromkeys(row["layer"] for row in rows):
        values = {row["explainer"]: row["spearman_mean"] for row in rows if row["layer"] == layer}
        lines.append(f"| {layer} | " + " | ".join(f"{values[e]:.3f}" for e in explainers) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """CSV via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as tmp:
            writer = csv.DictWriter(tmp, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--config", default=None, help="LightningCLI YAML whose `data` section builds the data")
    parser.add_argument("--explainers", nargs="+", default=["fam", "gradcam"], choices=sorted(EXPLAINERS))
    parser.add_argument("--episodes", type=int, default=5, help="validation episodes explained")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--root", default=None, help="CUB-200-2011 folder (default: synthetic data)")
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--model_class", default=DEFAULT_MODEL_CLASS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation")
    parser.add_argument("--out", default=None, help="CSV file for the per-layer results")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if not Path(args.ckpt_path).is_file():
        parser.error(f"checkpoint not found: {args.ckpt_path}")
    try:
        rows = run(args)
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))
    print("Spearman rank correlation of maps, trained vs cascading randomisation (top layer first); "
          "lower is better, ~0 = the maps depend on the weights")
    print(markdown_table(rows, args.explainers))
    if args.out:
        write_csv(rows, Path(args.out))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
