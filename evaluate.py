"""Evaluate a few-shot checkpoint over test episodes and add its row to a paper-style table.

    python evaluate.py --config configs/fewshot/conv4_synthetic.yaml \
        --ckpt_path logs/.../last.ckpt --name Conv4 --table results/fewshot_synthetic

Runs ``trainer.test`` (novel classes, the config's test episodes; override any
value as in train.py, e.g. ``--data.test_episodes 2000``) with the FAM callback,
then writes ``<table>.csv`` and ``<table>.md``: accuracy +- 95% CI, energy
proportion, IoU, Average Drop, Increase in Confidence (the paper's Tables I-II),
one row per model; re-running a model replaces its row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

import callbacks  # noqa: F401
import datamodules  # noqa: F401
import fam_lightning.models  # noqa: F401
from fam_lightning.report import read_rows, upsert_row, write_tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--name", required=True, help="row name, e.g. Conv4")
    parser.add_argument("--table", default="results/fewshot", help="output path without suffix")
    parser.add_argument("--note", default="", help="free text for the Note column, e.g. 'synthetic data'")
    args, cli_args = parser.parse_known_args(argv)
    if not Path(args.ckpt_path).is_file():
        parser.error(f"checkpoint not found: {args.ckpt_path}")
    cli = LightningCLI(
        subclass_mode_model=True, subclass_mode_data=True, run=False,
        args=cli_args, save_config_callback=None,
    )
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt_path)
    if not cli.trainer.is_global_zero:
        return
    metrics = {k: float(v) for k, v in results[0].items()}
    stem = Path(args.table)
    rows = upsert_row(read_rows(stem.with_suffix(".csv")), args.name, metrics, args.note)
    csv_path, md_path = write_tables(rows, stem)
    print(f"\n{md_path.read_text()}\nwrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
