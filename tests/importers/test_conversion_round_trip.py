"""A published NPID / MoCo file converted by ``python -m fam_lightning.importers`` works with ``train.py validate``,
``fam-evaluate``, ``fam-sanity`` and ``fam-explain``, with the authors' kNN answers; users' mistakes end
in one sentence and exit status 2.

The data is a synthetic ImageNet-layout folder written by the test: 4 classes x 10 training images at
64 x 64, a ResNet-18, and a kNN of K = 10 (``--knn-k``; 200 as published).
"""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest
import torch

from fam_lightning.datamodules import ContrastiveDataModule
from fam_lightning.datamodules.synthetic.imagenet_layout import write_synthetic_imagenet
from tests.helpers.cli import REPO, run_cli, run_main
from tests.importers.published_files import (
    embed, lemniscate_knn, source_resnet18, write_lemniscate_checkpoint, write_moco_checkpoint,
)

pytestmark = pytest.mark.slow

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE, K = 4, 10, 3, 64, 10
CONFIGS = {"npid": "npid_resnet50_import.yaml", "moco_v2": "moco_v2_resnet50_import.yaml"}
DATA_ARGS = ["--data.image_size", str(SIZE), "--data.batch_size", "16", "--data.num_workers", "0",
             "--data.pin_memory", "false", "--trainer.accelerator", "cpu"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python <args>`` from ``cwd`` as a user runs it (not checked), in this process: ``train.py ...`` or
    ``-m fam_lightning.importers ...``."""
    from fam_lightning.tools.convert import main as convert

    if args[:2] == ["-m", "fam_lightning.importers"]:
        return run_main(convert, args[2:], cwd, program="python -m fam_lightning.importers", check=False)
    assert args[0] == str(REPO / "train.py"), args
    return run_cli(args[1:], cwd, check=False)


def succeeded(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def printed(metric: str, output: str) -> float:
    match = re.search(rf"{re.escape(metric)}[\s│]+([-\d.eE+naN]+)", output)
    assert match, f"{metric} not printed:\n{output[-3000:]}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_imagenet(tmp_path_factory.mktemp("imagenet") / "root", num_classes=CLASSES,
                                    train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, image_size=SIZE)


def _train_and_val(root: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train labels, un-augmented train images, the val batch) as the CLI's data module reads them."""
    data = ContrastiveDataModule(root=str(root), image_size=SIZE, batch_size=16)
    data.setup("validate")
    train = data.train_images(torch.arange(data.num_train_images))
    val = next(iter(torch.utils.data.DataLoader(data._eval_set("val"), batch_size=1000,
                                                collate_fn=data.val_dataloader()[0].collate_fn)))
    return data.train_labels, train, val


def _converted(kind: str, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, float]:
    """A published file of ``kind`` written by the authors' code, converted; and the authors' kNN top-1."""
    labels, train, val = _train_and_val(root)
    source = source_resnet18("linear" if kind == "npid" else "mlp", seed=2)
    bank = embed(source, train)
    published = tmp_path / f"{kind}.pth.tar"
    extra: list[str] = []
    if kind == "npid":
        write_lemniscate_checkpoint(published, source, bank, monkeypatch)
    else:  # a released MoCo file: no module. prefix, no key encoder; its bank is computed over root/train
        write_moco_checkpoint(published, source, None, prefix="", queue=64)
        extra = ["--bank-size", str(len(labels))]
    target = tmp_path / f"{kind}.ckpt"
    out = succeeded(run(["-m", "fam_lightning.importers", str(published), str(target), "--image-size", str(SIZE),
                         "--knn-k", str(K), *extra], tmp_path))
    assert f"wrote {target}" in out
    published.unlink()  # the converted file stands alone
    predictions = lemniscate_knn(embed(source, val["image"]), bank, labels, k=K, t=0.07, classes=CLASSES)
    return target, 100.0 * (predictions == val["label"]).float().mean().item()


@pytest.mark.parametrize("kind", ["npid", "moco_v2"])
def test_a_converted_checkpoint_validates_evaluates_explains_and_passes_the_sanity_check(
    kind: str, imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fam_lightning.tools.evaluate import main as evaluate
    from fam_lightning.tools.explain import main as explain
    from fam_lightning.tools.sanity import main as sanity

    checkpoint, expected = _converted(kind, imagenet, tmp_path, monkeypatch)
    config = REPO / "configs" / "contrastive" / CONFIGS[kind]
    out = succeeded(run([str(REPO / "train.py"), "validate", "--config", str(config), "--ckpt_path", str(checkpoint),
                         "--data.root", str(imagenet), *DATA_ARGS], tmp_path))
    assert printed("val/knn_top1", out) == pytest.approx(expected, abs=1e-3)
    for metric in ("val/fam_energy_pointing_game", "val/fam_iou", "val/fam_average_drop"):
        assert torch.isfinite(torch.tensor(printed(metric, out))), metric

    monkeypatch.chdir(tmp_path)  # the tools' logs and outputs
    table = tmp_path / "results" / "imagenet"
    assert evaluate(["--ckpt_path", str(checkpoint), "--name", kind, "--table", str(table),
                     "--data.root", str(imagenet), *DATA_ARGS]) == 0
    row = next(csv.DictReader(table.with_suffix(".csv").open()))
    assert row["Model"] == kind and float(row["kNN top-1 (%)"]) == pytest.approx(expected, abs=0.01)

    assert sanity(["--ckpt_path", str(checkpoint), "--data.root", str(imagenet), "--data.batch_size", "2",
                   "--batches", "1", "--explainers", "fam", "--out", str(tmp_path / "sanity.csv"),
                   "--device", "cpu"]) == 0  # 2 images explained against their neighbours
    rows = list(csv.DictReader((tmp_path / "sanity.csv").open()))
    assert rows[0]["layer"].startswith("projection") and int(rows[0]["num_maps"]) + int(rows[0]["num_constant"]) == 2

    images = sorted((imagenet / "val").rglob("*.JPEG"))
    references = sorted((imagenet / "train").rglob("*.JPEG"))[:2]
    assert explain(["--ckpt_path", str(checkpoint), "--images", str(images[0]), "--references",
                    *map(str, references), "--out", str(tmp_path / "explained"), "--device", "cpu"]) == 0
    assert any((tmp_path / "explained").iterdir())


def test_users_mistakes_end_in_one_sentence_and_exit_status_2(
    imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(REPO / "configs" / "contrastive" / CONFIGS["npid"])
    published = tmp_path / "npid.pth.tar"
    _, train, _ = _train_and_val(imagenet)
    source = source_resnet18("linear", seed=2)
    write_lemniscate_checkpoint(published, source, embed(source, train), monkeypatch)

    # the config's ResNet-50 for a ResNet-18 file
    proc = run([str(REPO / "train.py"), "validate", "--config", config, "--model.init_args.import_checkpoint",
                str(published), "--data.root", str(imagenet), *DATA_ARGS], tmp_path)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {published} is a npid resnet18 (linear head, 128-d); the model does not match it: "
        "set --model.init_args.backbone resnet18"
    )

    # a converted bank of 40 rows against another training set
    other = write_synthetic_imagenet(tmp_path / "other", num_classes=3, train_per_class=5, val_per_class=2,
                                     image_size=32)
    checkpoint = tmp_path / "npid.ckpt"
    succeeded(run(["-m", "fam_lightning.importers", str(published), str(checkpoint), "--knn-k", str(K)], tmp_path))
    proc = run([str(REPO / "train.py"), "validate", "--config", config, "--ckpt_path", str(checkpoint),
                "--data.root", str(other), *DATA_ARGS], tmp_path)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {checkpoint}: its memory bank has {CLASSES * TRAIN_PER_CLASS} rows")
    assert f"{other}/train has 15 images" in last and "data.root/train must be the training set" in last
