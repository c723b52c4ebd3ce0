"""One flag convention for every fam-* tool (fam_lightning/tools/common.py): --ckpt_path, --config,
--data.* / --data.init_args.*, --model_class; abbreviations refused; user errors one sentence, exit 2."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning
import pytest
import torch

from fam_lightning.models import FewShotClassifier
from fam_lightning.report import FEWSHOT_COLUMNS, RETRIEVAL_COLUMNS
from fam_lightning.tools import evaluate, explain, sanity
from fam_lightning.tools.common import ToolParser, add_checkpoint_arguments, parse_tool_args, split_dotted
from tests.helpers.cli import REPO

MODEL_CLASS = "fam_lightning.models.FewShotClassifier"
DATA_CLASS = "fam_lightning.datamodules.FewShotDataModule"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained few-shot checkpoint with the keys fam-train writes (model and data classes named)."""
    torch.manual_seed(0)
    model = FewShotClassifier(num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "fresh.ckpt"
    hparams = dict(model.hparams) | {"_class_path": MODEL_CLASS,
                                     "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    data = {"image_size": 40, "synthetic_classes": 24, "_class_path": DATA_CLASS}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "datamodule_hyper_parameters": data,
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.new("RGB", (50, 40), (120, 60, 30)).save(path)
    return path


def _error(capsys, call) -> str:
    """The last line a tool printed when it stopped with a user error (exit 2)."""
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# -- the shared parser ----------------------------------------------------------------------
def test_dotted_flags_are_typed_as_yaml_in_every_spelling() -> None:
    rest, found = split_dotted([
        "--images", "a.png", "--data.root", "/data/CUB", "--data.init_args.image_size", "32",
        "--data.verify_images=true", "--data.seed=null", "--model.init_args.lr", "1e-3", "--data.class_path", "x.Y",
        "--data.train_ways", "[1, 2]",
    ])
    assert rest == ["--images", "a.png"]
    assert found["data"] == {"root": "/data/CUB", "image_size": 32, "verify_images": True, "seed": None,
                             "class_path": "x.Y", "train_ways": [1, 2]}
    assert found["model"] == {"lr": 1e-3}
    with pytest.raises(ValueError, match="--data.root needs a value"):
        split_dotted(["--data.root"])
    with pytest.raises(ValueError, match="one level"):
        split_dotted(["--data.init_args.a.b", "1"])


def test_config_then_flags_override_the_checkpoint(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model:\n  class_path: fam_lightning.models.FewShotClassifier\n  init_args:\n    lr: 0.5\n"
        "data:\n  class_path: fam_lightning.datamodules.FewShotDataModule\n  init_args:\n    image_size: 84\n"
        "    root: /from/config\ntrainer:\n  max_epochs: 3\n"
    )
    parser = ToolParser(prog="tool")
    add_checkpoint_arguments(parser)
    args, overrides = parse_tool_args(parser, ["--ckpt_path", "c.ckpt", "--config", str(config),
                                               "--data.root", "/from/flag"])
    assert args.ckpt_path == "c.ckpt"
    assert overrides.model_class == MODEL_CLASS and overrides.data_class == DATA_CLASS
    assert overrides.model == {"lr": 0.5}
    assert overrides.data == {"image_size": 84, "root": "/from/flag"}  # the flag wins over the config
    args, overrides = parse_tool_args(parser, ["--ckpt_path", "c", "--config", str(config), "--model_class", "a.B"])
    assert overrides.model_class == "a.B"  # --model_class wins over the config's class_path


def test_bad_config_is_one_sentence(tmp_path: Path, capsys) -> None:
    parser = ToolParser(prog="tool")
    add_checkpoint_arguments(parser)
    missing = tmp_path / "nope.yaml"
    assert _error(capsys, lambda: parse_tool_args(parser, ["--ckpt_path", "c", "--config", str(missing)])) == (
        f"tool: error: config not found: {missing}"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [1, 2\n")
    assert "is not valid YAML" in _error(capsys, lambda: parse_tool_args(parser, ["--ckpt_path", "c", "--config",
                                                                                  str(broken)]))


# -- abbreviations are refused by every tool ---------------------------------------------------
@pytest.mark.parametrize("tool, argv, flag", [
    (explain, ["--images", "x.png", "--explainer", "fam"], "--explainer"),
    (explain, ["--images", "x.png", "--ref", "y.png"], "--ref"),
    (sanity, ["--batch", "1"], "--batch"),
    (sanity, ["--shuffled_ckpt", "other.ckpt"], "--shuffled_ckpt"),
])
def test_abbreviated_options_are_refused(tool, argv: list[str], flag: str, checkpoint: Path, capsys) -> None:
    last = _error(capsys, lambda: tool.main(["--ckpt_path", str(checkpoint), *argv]))
    assert "unrecognized arguments" in last and flag in last


def test_evaluate_refuses_abbreviations(checkpoint: Path, capsys) -> None:
    parser = evaluate.build_parser()
    args, rest = parser.parse_known_args(["--ckpt_path", "c", "--name", "A", "--tab", "t"])
    assert args.table == "results/fewshot" and rest == ["--tab", "t"]  # left to LightningCLI, which refuses it
    last = _error(capsys, lambda: evaluate.main(["--ckpt_path", str(checkpoint), "--nam", "Conv4"]))
    assert "--name" in last and "required" in last


# -- fam-sanity: --data.* and --config; --root / --data_dir kept as deprecated aliases ------------
def test_sanity_takes_data_flags_and_the_deprecated_aliases(checkpoint: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_CUB"
    for flags in (["--data.root", str(missing)], ["--data.init_args.root", str(missing)], ["--root", str(missing)]):
        last = _error(capsys, lambda: sanity.main(["--ckpt_path", str(checkpoint), "--device", "cpu", *flags]))
        assert str(missing) in last
    with pytest.raises(SystemExit):
        sanity.main(["--ckpt_path", str(checkpoint), "--device", "cpu", "--root", str(missing)])
    assert "--root is deprecated, use --data.root" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  class_path: {DATA_CLASS}\n  init_args:\n    root: {missing}\n")
    last = _error(capsys, lambda: sanity.main(["--ckpt_path", str(checkpoint), "--device", "cpu",
                                               "--config", str(config)]))
    assert str(missing) in last


# -- fam-explain: --config / --data.* give the input size; --out checked before the model -------------
def test_explain_takes_config_and_data_flags(checkpoint: Path, photo: Path, tmp_path: Path, capsys) -> None:
    base = ["--ckpt_path", str(checkpoint), "--images", str(photo), "--explainers", "eigencam", "--device", "cpu"]
    assert explain.main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "model input 40 x 40" in capsys.readouterr().out  # the checkpoint's data image_size
    assert explain.main([*base, "--out", str(tmp_path / "b"), "--config", str(REPO / "configs/quickstart.yaml")]) == 0
    assert "model input 84 x 84" in capsys.readouterr().out  # the config's data section
    assert explain.main([*base, "--out", str(tmp_path / "c"), "--data.init_args.image_size", "32"]) == 0
    assert "model input 32 x 32" in capsys.readouterr().out


def test_explain_out_that_is_a_file_stops_before_the_model_loads(
    checkpoint: Path, photo: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    existing = tmp_path / "figures"
    existing.write_text("not a folder")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(explain, "load_model", never)
    last = _error(capsys, lambda: explain.main(["--ckpt_path", str(checkpoint), "--images", str(photo),
                                                "--explainers", "eigencam", "--out", str(existing)]))
    assert last == f"fam-explain: error: --out {existing} is a file; expected a folder for the figures (or a new name)"
    nested = existing / "sub"
    assert "is a file, expected a folder" in _error(capsys, lambda: explain.main(
        ["--ckpt_path", str(checkpoint), "--images", str(photo), "--explainers", "eigencam", "--out", str(nested)]))


# -- fam-evaluate: the table is checked before the test; the progress bar is on ----------------------
def _write_table(path: Path, columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["Model", *(h for _, h in columns), "Note"],
                                      ["Other", *("1.00" for _ in columns), ""]])


class _NoTest(Exception):
    pass


def test_evaluate_checks_the_table_before_building_the_run(checkpoint: Path, tmp_path: Path, capsys,
                                                           monkeypatch) -> None:
    def no_run(*args, **kwargs):
        raise AssertionError("the test started before --table was checked")

    monkeypatch.setattr(evaluate, "FAMLightningCLI", no_run)
    other_family = tmp_path / "results" / "retrieval"
    _write_table(other_family.with_suffix(".csv"), RETRIEVAL_COLUMNS)
    base = ["--ckpt_path", str(checkpoint), "--name", "Conv4"]
    last = _error(capsys, lambda: evaluate.main([*base, "--table", str(other_family)]))
    assert "is a retrieval table and the checkpoint holds a few-shot model" in last
    foreign = tmp_path / "results" / "mine"
    foreign.with_suffix(".csv").write_text("a,b\n1,2\n")
    assert "is not a fam-evaluate table (columns ['a', 'b'])" in _error(
        capsys, lambda: evaluate.main([*base, "--table", str(foreign)]))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert f"{a_file} is a file, expected a folder" in _error(
        capsys, lambda: evaluate.main([*base, "--table", str(a_file / "fewshot")]))


def test_evaluate_shows_the_progress_bar_and_keeps_a_same_family_table(
    checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    seen = {}

    def capture(**kwargs):
        seen.update(kwargs)
        raise _NoTest

    monkeypatch.setattr(evaluate, "FAMLightningCLI", capture)
    table = tmp_path / "fewshot"
    _write_table(table.with_suffix(".csv"), FEWSHOT_COLUMNS)
    config = str(REPO / "configs/quickstart.yaml")
    with pytest.raises(_NoTest):
        evaluate.main(["--ckpt_path", str(checkpoint), "--name", "Conv4", "--table", str(table),
                       "--trainer.max_epochs", "1", "--config", config, "--data.root", "/data/CUB"])
    args = seen["args"]
    # the checkpoint's model and data first, then the config, the progress bar, and the user's overrides
    assert args[0] == "--model" and args[2] == "--data" and args[4:6] == ["--config", config]
    assert args[6:] == ["--trainer.enable_progress_bar=true", "--trainer.max_epochs", "1", "--data.root", "/data/CUB"]
    assert seen["parser_kwargs"] == {"allow_abbrev": False}
