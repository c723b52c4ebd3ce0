"""Test a checkpoint and add its row to a paper-style table (CSV + Markdown): ``fam-evaluate``.

    fam-evaluate --ckpt_path logs/.../last.ckpt --name Conv4 --table results/fewshot_synthetic
    fam-evaluate --config configs/fewshot/resnet12_cub.yaml --data.root /data/CUB_200_2011 \
        --data.test_episodes 2000 --ckpt_path <ckpt> --name ResNet12 --table results/fewshot_cub

Runs ``trainer.test`` with the FAM callback, then writes ``<table>.csv`` and
``<table>.md``, one row per model (re-running a model replaces its row):
few-shot accuracy +- 95% CI (the paper's Tables I-II), memory-bank kNN
top-1 / top-5, or retrieval Recall@K and MAP@R, each with the FAM energy
proportion, IoU, Average Drop and Increase in Confidence.

The model and data module (classes and arguments) come from the checkpoint;
``--config`` and any ``--model.*`` / ``--data.*`` / ``--trainer.*`` value
override them, as in ``fam-train``. Without ``--config`` the trainer is
LightningCLI's default plus a ``FAMCallback``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fam_lightning.cli import FAMLightningCLI
from fam_lightning.loading import DATAMODULE_KEY, MODEL_KEY, read_checkpoint
from fam_lightning.report import read_rows, upsert_row, write_tables

FAM_CALLBACK = "fam_lightning.callbacks.FAMCallback"


def checkpoint_arguments(checkpoint: dict[str, Any], with_config: bool) -> list[str]:
    """LightningCLI arguments that rebuild the checkpoint's model and data module (given first: overridable)."""
    arguments = []
    for flag, key in (("--model", MODEL_KEY), ("--data", DATAMODULE_KEY)):
        stored = dict(checkpoint.get(key) or {})
        class_path = stored.get("_class_path")
        if class_path:
            init_args = {k: v for k, v in stored.items() if not k.startswith("_")}
            arguments += [flag, json.dumps({"class_path": class_path, "init_args": init_args})]
        elif not with_config:
            raise ValueError(
                f"the checkpoint does not name its {flag[2:]} class ({key}['_class_path'] is missing: it was not "
                "written by fam-train / train.py); pass --config with `model` and `data` sections"
            )
    if not with_config:
        arguments += [f"--trainer.callbacks+={FAM_CALLBACK}"]
    return arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fam-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by fam-train / train.py")
    parser.add_argument("--name", required=True, help="row name, e.g. Conv4")
    parser.add_argument("--table", default="results/fewshot", help="output path without suffix")
    parser.add_argument("--note", default="", help="free text for the Note column, e.g. 'synthetic data'")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, cli_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        checkpoint = read_checkpoint(args.ckpt_path)
        with_config = any(a == "--config" or a.startswith("--config=") for a in cli_args)
        cli_args = checkpoint_arguments(checkpoint, with_config) + cli_args
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    del checkpoint  # trainer.test reads it again, onto the right device
    cli = FAMLightningCLI(
        subclass_mode_model=True, subclass_mode_data=True, run=False, args=cli_args, save_config_callback=None,
    )
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt_path)
    if not cli.trainer.is_global_zero:
        return 0
    metrics = {k: float(v) for k, v in results[0].items()}
    stem = Path(args.table)
    try:
        rows = upsert_row(read_rows(stem.with_suffix(".csv")), args.name, metrics, args.note)
    except (KeyError, ValueError) as err:
        parser.error(str(err).strip("'\""))
    csv_path, md_path = write_tables(rows, stem)
    print(f"\n{md_path.read_text()}\nwrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
