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
override them, as in ``fam-train`` (``--model_class`` replaces the model
class). Without ``--config`` the trainer is LightningCLI's default plus a
``FAMCallback``. Lightning's progress bar shows the test's progress
(``--trainer.enable_progress_bar false`` hides it).

``--table`` is checked before the test runs: its folder must be writable, and
an existing table must be of the checkpoint's family (the same columns).
Options are never abbreviated (``--na`` is not ``--name``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from fam_lightning.console import quiet_lightning
from fam_lightning.cli import FAMLightningCLI
from fam_lightning.loading import DATAMODULE_KEY, MODEL_KEY, import_class, read_checkpoint
from fam_lightning.report import TABLES, read_rows, upsert_row, write_tables
from fam_lightning.tools.common import ToolParser, check_writable_folder, model_family

FAM_CALLBACK = "fam_lightning.callbacks.FAMCallback"


def checkpoint_arguments(
    checkpoint: dict[str, Any], with_config: bool, model_class: str | None = None
) -> list[str]:
    """LightningCLI arguments that rebuild the checkpoint's model and data module (given first: overridable).

    ``model_class`` replaces the stored model class (its stored arguments are kept when it is the same class).
    """
    arguments = []
    for flag, key in (("--model", MODEL_KEY), ("--data", DATAMODULE_KEY)):
        stored = dict(checkpoint.get(key) or {})
        class_path = stored.get("_class_path")
        init_args = {k: v for k, v in stored.items() if not k.startswith("_")}
        if flag == "--model" and model_class:
            if not class_path or import_class(class_path) is not import_class(model_class):
                init_args = {}
            class_path = model_class
        if class_path:
            arguments += [flag, json.dumps({"class_path": class_path, "init_args": init_args})]
        elif not with_config:
            option = "--model_class or " if flag == "--model" else ""
            raise ValueError(
                f"the checkpoint does not name its {flag[2:]} class ({key}['_class_path'] is missing: it was not "
                f"written by fam-train / train.py); pass {option}--config with `model` and `data` sections"
            )
    if not with_config:
        arguments += [f"--trainer.callbacks+={FAM_CALLBACK}"]
    return arguments


def table_family(csv_path: Path) -> str | None:
    """The family of an existing table (its columns), None if it does not exist.

    Raises:
        ValueError: a file that is not one of the tables fam-evaluate writes.
    """
    if not csv_path.exists():
        return None
    if not csv_path.is_file():
        raise ValueError(f"--table: {csv_path} is a folder, expected a CSV table (or no file)")
    try:
        with csv_path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"--table: cannot read {csv_path}: {err}") from err
    for family, columns in TABLES.items():
        if header == ["Model", *(name for _, name in columns), "Note"]:
            return family
    raise ValueError(
        f"--table: {csv_path} is not a fam-evaluate table (columns {header}); write to another --table"
    )


def check_table(stem: Path, family: str | None) -> None:
    """Before the test: ``stem``'s folder is writable and an existing table has ``family``'s columns."""
    check_writable_folder(stem.parent, f"--table {stem}")
    for suffix in (".csv", ".md"):
        if stem.with_suffix(suffix).is_dir():
            raise ValueError(f"--table: {stem.with_suffix(suffix)} is a folder, expected a file path")
    existing = table_family(stem.with_suffix(".csv"))
    if existing is not None and family is not None and existing != family:
        raise ValueError(
            f"--table: {stem.with_suffix('.csv')} is a {existing} table and the checkpoint holds a {family} "
            "model (other columns): write it to another --table"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="fam-evaluate", description=__doc__.splitlines()[0],
        epilog="Any other option (--config, --data.*, --model.*, --trainer.*) goes to LightningCLI, as in fam-train.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by fam-train / train.py")
    parser.add_argument("--name", required=True, help="row name, e.g. Conv4")
    parser.add_argument("--table", default="results/fewshot", help="output path without suffix")
    parser.add_argument("--note", default="", help="free text for the Note column, e.g. 'synthetic data'")
    parser.add_argument("--model_class", default=None, help="the model class (dotted path), overriding the "
                        "checkpoint's")
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_lightning()
    parser = build_parser()
    args, cli_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    stem = Path(args.table)
    try:
        checkpoint = read_checkpoint(args.ckpt_path)
        with_config = any(a == "--config" or a.startswith("--config=") for a in cli_args)
        prefix = checkpoint_arguments(checkpoint, with_config, args.model_class)
        stored_class = args.model_class or (checkpoint.get(MODEL_KEY) or {}).get("_class_path")
        check_table(stem, model_family(import_class(stored_class)) if stored_class else None)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    del checkpoint  # trainer.test reads it again, onto the right device
    # the progress bar after the checkpoint's / config's trainer settings, before the user's own options
    cli_args = [*prefix, *_config_first(cli_args), "--trainer.enable_progress_bar=true", *_after_config(cli_args)]
    try:
        cli = FAMLightningCLI(
            subclass_mode_model=True, subclass_mode_data=True, run=False, args=cli_args, save_config_callback=None,
            parser_kwargs={"allow_abbrev": False},
        )
        check_table(stem, model_family(cli.model))
        if not any(type(c).__name__ == "FAMCallback" for c in cli.trainer.callbacks):
            raise ValueError(
                f"the trainer has no FAMCallback (the table's FAM columns need it): add {FAM_CALLBACK} to the "
                "config's trainer.callbacks"
            )
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if not cli.trainer.is_global_zero:
        return 0
    metrics = {k: float(v) for k, v in results[0].items()}
    try:
        rows = upsert_row(read_rows(stem.with_suffix(".csv")), args.name, metrics, args.note)
    except (KeyError, ValueError) as err:
        parser.error(str(err).strip("'\""))
    csv_path, md_path = write_tables(rows, stem)
    print(f"\n{md_path.read_text()}\nwrote {csv_path} and {md_path}")
    return 0


def _config_first(cli_args: list[str]) -> list[str]:
    """The ``--config`` options of ``cli_args`` (with their values)."""
    return [a for i, a in enumerate(cli_args) if _is_config(cli_args, i)]


def _after_config(cli_args: list[str]) -> list[str]:
    """``cli_args`` without their ``--config`` options."""
    return [a for i, a in enumerate(cli_args) if not _is_config(cli_args, i)]


def _is_config(cli_args: list[str], index: int) -> bool:
    arg = cli_args[index]
    return arg == "--config" or arg.startswith("--config=") or (index > 0 and cli_args[index - 1] == "--config")


if __name__ == "__main__":
    sys.exit(main())
