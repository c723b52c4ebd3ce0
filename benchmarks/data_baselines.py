"""Class-agnostic baselines of the synthetic data: does a map that knows nothing of the class localise it?

On validation episodes (5-way 1-shot 15-query, 84 px) of the synthetic
CUB-layout data set, prints the energy pointing game (eq. 19, percent of the
saliency inside the class object's box) of:

- the uniform map: the box-area fraction, the chance level;
- the activation sum: ``sum_k A_k`` of an UNTRAINED Conv4 (random init, seed 0),
  ReLU, min-max, upsampled as FAM is;
- FAM of that untrained Conv4 (references: the support image of the
  predicted class, as the callback does);
- FAM of a trained checkpoint, with ``--ckpt_path``.

With ``--config`` the same baselines are measured on the data a training
config uses, for every family and both layouts: the config's data module and
its model (untrained, weights from ``--seed``), deciding as in validation:

- few-shot (CUB layout): validation episodes, references the predicted class's supports;
- retrieval (CUB layout, retrieval split): every test image queried against
  all the others, reference its top-1 retrieved image;
- NPID / MoCo (ImageNet layout): every val image classified by the weighted
  kNN over a bank of the untrained model's embeddings of the training images,
  references the predicted class's neighbours weighted by their votes.

On data where the class object is the only salient thing, the class-agnostic
maps score far above the uniform map and an explanation cannot be told from
an edge detector; the synthetic data v2 (distractors + saturated clutter) is
meant to bring them near it. Each figure is given over all queries and over
the correctly classified ones (what the paper and the callback report).

    python benchmarks/data_baselines.py [--episodes 20] [--distractors 0 3] [--root OTHER_CUB_FOLDER ...]
        [--ckpt_path last.ckpt]
    python benchmarks/data_baselines.py --config configs/retrieval/ms_synthetic.yaml configs/contrastive/npid_synthetic.yaml
        [--data.synthetic_distractors 1 ...: any data init_arg, applied to every config]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fam_lightning.datamodules import FewShotDataModule  # noqa: E402
from fam_lightning.datamodules.synthetic.drawing import DEFAULT_DISTRACTORS  # noqa: E402
from fam_lightning.explainers.base import normalize_saliency  # noqa: E402
from fam_lightning.explainers.feature_activation import FAMExplainer  # noqa: E402
from fam_lightning.metrics import energy_pointing_game  # noqa: E402
from fam_lightning.models import FewShotClassifier  # noqa: E402


def untrained_conv4(seed: int = 0) -> FewShotClassifier:
    """Conv4 few-shot model with random weights drawn from ``seed`` (as the quickstart builds it)."""
    torch.manual_seed(seed)
    return FewShotClassifier(backbone="conv4", pooling="gap", similarity="cosine", num_classes=None).eval()


def episode_energies(model: FewShotClassifier, data: FewShotDataModule) -> dict[str, Tensor]:
    """Per-query energy of each map over the validation episodes, plus a ``correct`` mask and the accuracy."""
    explainer = FAMExplainer(model)
    columns: dict[str, list[Tensor]] = {"uniform": [], "activation sum": [], "fam": [], "correct": []}
    with torch.no_grad():
        for batch in data.val_dataloader():
            inputs = model.explanation_inputs(batch)
            size = tuple(inputs.images.shape[-2:])
            maps = {
                "uniform": torch.ones(inputs.images.shape[0], *size),
                "activation sum": normalize_saliency(inputs.feature_maps.sum(1), size),
                "fam": explainer.from_feature_maps(inputs.feature_maps, inputs.references, size=size),
            }
            for name, saliency in maps.items():
                columns[name].append(energy_pointing_game(saliency, inputs.boxes))
            columns["correct"].append(inputs.correct)
    return {name: torch.cat(values) for name, values in columns.items()}


def data_module(args: argparse.Namespace, root: str | None, distractors: int) -> FewShotDataModule:
    data = FewShotDataModule(
        root=root, data_dir=args.data_dir, image_size=args.image_size, eval_ways=5, eval_shots=1,
        eval_queries=15, val_episodes=args.episodes, num_workers=0, synthetic_distractors=distractors,
    )
    data.setup("validate")
    return data


def _instantiate(spec: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    """Build ``{"class_path": ..., "init_args": {...}}`` (a config's model or data section)."""
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**spec.get("init_args", {}), **(overrides or {})})


def config_energies(config: str, seed: int, data_overrides: dict[str, Any]) -> tuple[Any, dict[str, Tensor]]:
    """The config's data module and the per-decision energies of its untrained model (see the module docstring)."""
    spec = yaml.safe_load(Path(config).read_text())
    data = _instantiate(spec["data"], data_overrides)
    data.prepare_data()
    data.setup("validate")
    torch.manual_seed(seed)
    model_args: dict[str, Any] = {}
    family = spec["model"]["class_path"].rpartition(".")[2]
    if family == "MemoryBankModel":
        model_args = {"bank_size": data.num_train_images, "num_classes": data.num_classes}
    elif family == "RetrievalModel" and spec["model"].get("init_args", {}).get("loss") == "margin":
        model_args = {"num_classes": data.num_train_classes}
    model = _instantiate(spec["model"], model_args).eval()
    if family == "FewShotClassifier":
        return data, episode_energies(model, data)
    with torch.no_grad():
        if family == "RetrievalModel":
            batches = list(data.val_dataloader()[0])
            model._reset_gallery()
            for batch in batches:  # the gallery: every test image
                model._eval_step(batch, 0, model.val_recall, model.val_nonfinite)
            decisions = [model._explain_queries(batch) for batch in batches]  # each queried against the others
        elif family == "MemoryBankModel":
            if not model.hparams.refresh_bank:  # a refresh_bank model computes these rows itself (attached data)
                loader = torch.utils.data.DataLoader(data._eval_set("train"), batch_size=data.batch_size)
                model.bank.bank.copy_(torch.cat([model(batch["image"]) for batch in loader]))
            model.bank.set_labels(data.train_labels)
            model.attach_datamodule(data)
            model._build_index()
            decisions = [model.validation_step(batch, i, 0)["explain"] for i, batch in enumerate(data.val_dataloader()[0])]
        else:
            raise ValueError(f"{config}: model {spec['model']['class_path']} is not a family this script measures")
    return data, decision_energies(model, decisions)


def decision_energies(model: Any, decisions: list[Any]) -> dict[str, Tensor]:
    """Per-decision energy of the uniform map, the activation sum and FAM, plus a ``correct`` mask."""
    explainer = FAMExplainer(model)
    columns: dict[str, list[Tensor]] = {"uniform": [], "activation sum": [], "fam": [], "correct": []}
    for inputs in decisions:
        size = tuple(inputs.images.shape[-2:])
        maps = {
            "uniform": torch.ones(inputs.images.shape[0], *size),
            "activation sum": normalize_saliency(inputs.feature_maps.sum(1), size),
            "fam": explainer.from_feature_maps(
                inputs.feature_maps, inputs.references, inputs.reference_weights, size=size
            ),
        }
        for name, saliency in maps.items():
            columns[name].append(energy_pointing_game(saliency, inputs.boxes))
        columns["correct"].append(inputs.correct)
    return {name: torch.cat(values) for name, values in columns.items()}


def _parse_overrides(extra: list[str]) -> dict[str, Any]:
    """``--data.NAME VALUE`` pairs (YAML values) -> ``{NAME: value}``."""
    if len(extra) % 2 or any(not k.startswith("--data.") for k in extra[::2]):
        raise SystemExit(f"unrecognised arguments {extra}: only --data.NAME VALUE pairs may follow --config")
    return {k[len("--data."):]: yaml.safe_load(v) for k, v in zip(extra[::2], extra[1::2])}


def report(label: str, energies: dict[str, Tensor], names: list[str]) -> None:
    correct = energies["correct"]
    print(f"\n{label}: {len(correct)} queries, accuracy {100 * correct.float().mean():.1f} %")
    print(f"  {'map':<28} {'energy, all (%)':>16} {'energy, correct (%)':>20}")
    for name in names:
        values = energies[name]
        right = values[correct].mean() if correct.any() else torch.tensor(float("nan"))
        print(f"  {name:<28} {100 * values.mean():>16.2f} {100 * right:>20.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data", help="where the synthetic default lives")
    parser.add_argument("--distractors", type=int, nargs="+", default=[DEFAULT_DISTRACTORS])
    parser.add_argument("--root", nargs="*", default=[], help="other CUB-layout folders to measure too")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=84)
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained model's weights")
    parser.add_argument("--ckpt_path", default=None, help="a trained FewShotClassifier to measure as well")
    parser.add_argument("--config", nargs="+", default=[], help="training configs: measure on the data each uses")
    args, extra = parser.parse_known_args()
    overrides = _parse_overrides(extra)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.config:
        names = ["uniform", "activation sum", f"untrained FAM (seed {args.seed})"]
        for config in args.config:
            data, energies = config_energies(config, args.seed, overrides)
            energies[names[-1]] = energies.pop("fam")
            report(f"{config} [{data.data_root}], untrained model", energies, names)
        return

    untrained = untrained_conv4(args.seed)
    trained = None
    if args.ckpt_path:
        from fam_lightning.loading import load_model

        trained = load_model(args.ckpt_path, device="cpu")
    sources = [(f"synthetic v2, {d} distractors", None, d) for d in args.distractors]
    sources += [(f"folder {root}", root, DEFAULT_DISTRACTORS) for root in args.root]
    for label, root, distractors in sources:
        data = data_module(args, root, distractors)
        energies = episode_energies(untrained, data)
        energies["untrained FAM (seed %d)" % args.seed] = energies.pop("fam")
        names = ["uniform", "activation sum", f"untrained FAM (seed {args.seed})"]
        report(f"{label} [{data.data_root}], untrained Conv4", energies, names)
        if trained is not None:
            report(f"{label}, trained {args.ckpt_path}", episode_energies(trained, data), ["uniform", "fam"])


if __name__ == "__main__":
    main()
