"""Published NPID / MoCo checkpoints, written here in their projects' exact layouts, imported and compared.

The source models are torchvision ResNet-18s with ``fc`` replaced, as
lemniscate.pytorch and facebookresearch/moco build them; the imported
MemoryBankModel must give the same embeddings and the same kNN predictions.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fam_lightning.importers import PublishedCheckpointError, read_published_checkpoint
from fam_lightning.models import MemoryBankModel
from tests.helpers.cli import REPO, run_cli
from tests.importers.published_files import (
    DIM, embed, lemniscate_knn, source_resnet18, write_lemniscate_checkpoint, write_moco_checkpoint,
)

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_npid_checkpoint_gives_the_source_embeddings_and_knn_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    source = source_resnet18("linear", seed=0)
    torch.manual_seed(1)
    train, queries = torch.randn(40, 3, 64, 64), torch.randn(6, 3, 64, 64)
    memory, labels = embed(source, train), torch.arange(40) % 4
    # rows of norm != 1 (as rows training never updated, still lemniscate's uniform initialisation, are)
    # are scored raw, as test.kNN scores them
    memory[::3] *= 1.3
    path = tmp_path / "checkpoint.pth.tar"
    write_lemniscate_checkpoint(path, source, memory, monkeypatch, legacy=legacy)

    model = MemoryBankModel(method="npid", backbone="resnet18", import_checkpoint=str(path), num_classes=4,
                            knn_k=10).eval()
    torch.testing.assert_close(model(queries), embed(source, queries), atol=1e-5, rtol=1e-4)
    assert torch.equal(model.bank.bank, memory)  # as saved, not re-normalised
    assert model.nce_normalizer.item() == 123.0
    model.bank.set_labels(labels)
    model._build_index()
    with torch.no_grad():
        scores, rows, _ = model.knn(model.embed(model.forward_features(queries)))
    expected = lemniscate_knn(embed(source, queries), memory, labels, k=10, t=0.07, classes=4)
    assert torch.equal(scores.argmax(1), expected)
    similarity = embed(source, queries) @ memory.t()  # test.kNN's neighbours and votes
    assert torch.equal(rows, similarity.topk(10, dim=1).indices)
    votes = torch.zeros(6, 4).scatter_add_(1, labels[rows], (similarity.gather(1, rows) / 0.07).exp())
    torch.testing.assert_close(scores / scores.sum(1, keepdim=True), votes / votes.sum(1, keepdim=True))
    cosine = embed(source, queries) @ F.normalize(memory, dim=1).t()
    assert not torch.equal(cosine.topk(10, dim=1).indices, rows)  # normalising the rows would change neighbours


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("prefix", ["module.", ""])
@pytest.mark.parametrize("with_key_encoder", [True, False])
def test_moco_checkpoint_gives_the_source_embeddings(tmp_path: Path, head: str, prefix: str,
                                                     with_key_encoder: bool) -> None:
    query, key = source_resnet18(head, seed=0), source_resnet18(head, seed=1)
    path = tmp_path / "moco.pth.tar"
    write_moco_checkpoint(path, query, key if with_key_encoder else None, prefix)
    imported = read_published_checkpoint(path)
    assert imported.source == ("moco_v2" if head == "mlp" else "moco_v1")

    model = MemoryBankModel(method="moco", backbone="resnet18", head=head, import_checkpoint=str(path)).eval()
    images = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(model(images), embed(query, images), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        keys = F.normalize(model.key_projection(model.key_backbone.forward_features(images).mean((2, 3))), dim=1)
    expected_key = key if with_key_encoder else query  # no encoder_k: MoCo's initial copy of encoder_q
    torch.testing.assert_close(keys, embed(expected_key, images), atol=1e-5, rtol=1e-4)
    queue = torch.load(path, weights_only=True)["state_dict"][f"{prefix}queue"]
    torch.testing.assert_close(model.queue.queue, queue.t())
    assert model.queue.ptr.item() == 16 and model.hparams.queue_size == 64
    assert not model.bank_filled  # MoCo has no bank: computed over the training set before evaluating


def test_mismatched_model_names_the_options_to_set(tmp_path: Path) -> None:
    path = tmp_path / "moco.pth.tar"
    write_moco_checkpoint(path, source_resnet18("mlp", seed=0), None, "module.")
    with pytest.raises(ValueError, match=r"--model.init_args.backbone resnet18 --model.init_args.head mlp"):
        MemoryBankModel(method="moco", backbone="resnet50", head="linear", import_checkpoint=str(path))
    with pytest.raises(ValueError, match="--model.init_args.method moco"):
        MemoryBankModel(method="npid", backbone="resnet18", head="mlp", import_checkpoint=str(path))
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(PublishedCheckpointError, match="neither a lemniscate.pytorch NPID nor a MoCo checkpoint"):
        read_published_checkpoint(tmp_path / "other.pth")


def _printed(metric: str, output: str) -> float:
    match = re.search(rf"{re.escape(metric)}[\s│]+([-\d.eE+naN]+)", output)
    assert match, f"{metric} not printed:\n{output[-3000:]}"
    return float(match.group(1))


DATA_ARGS = ["--data.synthetic_classes", "4", "--data.synthetic_train_per_class", "8",
             "--data.synthetic_val_per_class", "4", "--data.synthetic_image_size", "64",
             "--data.image_size", "64", "--data.batch_size", "8", "--data.num_workers", "0",
             "--data.cache_images", "true", "--data.pin_memory", "false", "--model.init_args.backbone", "resnet18",
             "--model.init_args.knn_k", "5", "--trainer.accelerator", "cpu"]


def _data(data_dir: Path):  # the datamodule the CLI builds, to compute the source model's answers
    from fam_lightning.datamodules import ContrastiveDataModule

    data = ContrastiveDataModule(root=None, data_dir=str(data_dir), image_size=64, batch_size=8,
                                 synthetic_classes=4, synthetic_train_per_class=8, synthetic_val_per_class=4,
                                 synthetic_image_size=64)
    data.setup("validate")
    train = data.train_images(torch.arange(data.num_train_images))
    val = next(iter(torch.utils.data.DataLoader(data._eval_set("val"), batch_size=1000,
                                                collate_fn=data.val_dataloader()[0].collate_fn)))
    return data.train_labels, train, val


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npid", "moco_v2"])
def test_validate_cli_reports_knn_top1_and_fam_metrics_of_an_imported_checkpoint(
    kind: str, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels, train, val = _data(data_dir)
    head = "linear" if kind == "npid" else "mlp"
    source = source_resnet18(head, seed=2)
    bank = embed(source, train)
    path = tmp_path / f"{kind}.pth.tar"
    if kind == "npid":
        write_lemniscate_checkpoint(path, source, bank, monkeypatch)
        config = "npid_resnet50_import.yaml"
    else:  # released MoCo files: no module. prefix, no key encoder
        write_moco_checkpoint(path, source, None, prefix="", queue=64)
        config = "moco_v2_resnet50_import.yaml"
    proc = run_cli(["validate", "--config", str(REPO / "configs" / "contrastive" / config),
                    "--model.init_args.import_checkpoint", str(path), "--data.root", "null",
                    "--data.data_dir", str(data_dir), *DATA_ARGS], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    predictions = lemniscate_knn(embed(source, val["image"]), bank, labels, k=5, t=0.07, classes=4)
    expected = 100.0 * (predictions == val["label"]).float().mean().item()
    assert _printed("val/knn_top1", out) == pytest.approx(expected, abs=1e-3)
    for metric in ("val/fam_energy_pointing_game", "val/fam_iou", "val/fam_average_drop"):
        assert math.isfinite(_printed(metric, out)), metric


@pytest.mark.parametrize("knn_embedding", ["head", "backbone"])
def test_npid_with_a_refreshed_bank_trains_on_from_the_imported_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, knn_embedding: str
) -> None:
    """With ``refresh_bank`` the file's memory is what the loss reads (``memory``), not the kNN bank, which
    is recomputed from the images; the head loads whether it is the protocol's projection or the loss's."""
    source = source_resnet18("linear", seed=0)
    torch.manual_seed(1)
    memory = F.normalize(torch.randn(30, DIM), dim=1)
    path = tmp_path / "checkpoint.pth.tar"
    write_lemniscate_checkpoint(path, source, memory, monkeypatch)
    model = MemoryBankModel(method="npid", backbone="resnet18", import_checkpoint=str(path), refresh_bank=True,
                            knn_embedding=knn_embedding, pooling="gmp", loss_pooling="gap").eval()
    assert torch.equal(model.memory.bank, memory) and model.memory_imported
    assert model.bank.size == 30 and not model.bank_filled  # computed over the training set before evaluating
    assert model.bank.bank.shape[1] == (DIM if knn_embedding == "head" else 512)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        loss_rows = model._loss_embedding(model.forward_features(images), model._head())
    torch.testing.assert_close(loss_rows, embed(source, images), atol=1e-5, rtol=1e-4)
    model._take_instances(1)
    assert torch.equal(model.memory.bank, memory)  # whole-image data keeps the imported rows
    with pytest.raises(ValueError, match="imported NPID memory has one row per image; set local_crop_grid to 0"):
        model._take_instances(9)
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    restored = MemoryBankModel(**{**checkpoint["hyper_parameters"], "bank_size": 30})
    restored.load_state_dict(checkpoint["state_dict"])
    restored.on_load_checkpoint(checkpoint)
    assert torch.equal(restored.memory.bank, memory) and restored.memory_imported
    with pytest.raises(PublishedCheckpointError, match="checkpoint.pth.tar: the imported NPID memory has 30 rows, "
                       "one per training image"):
        MemoryBankModel(method="npid", backbone="resnet18", import_checkpoint=str(path), refresh_bank=True,
                        instances_per_image=9)


def test_a_checkpoint_saved_after_import_reloads_without_the_original_file(tmp_path: Path) -> None:
    path = tmp_path / "moco.pth.tar"
    write_moco_checkpoint(path, source_resnet18("linear", seed=0), None, "module.")
    model = MemoryBankModel(method="moco", backbone="resnet18", head="linear", import_checkpoint=str(path),
                            bank_size=8)
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    path.unlink()
    assert model.hparams.import_checkpoint == str(path)  # the live model's hparams are left alone
    restored = MemoryBankModel(**checkpoint["hyper_parameters"])
    restored.load_state_dict(checkpoint["state_dict"])
    restored.on_load_checkpoint(checkpoint)
    assert not restored.bank_filled  # still to be computed over the training set
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(restored.eval()(images), model.eval()(images))


def test_converter_writes_a_lightning_checkpoint_that_loads_safely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fam_lightning.tools.convert import main
    from fam_lightning.loading import load_model, read_checkpoint

    source = source_resnet18("linear", seed=0)
    memory = F.normalize(torch.randn(12, DIM), dim=1)
    write_lemniscate_checkpoint(tmp_path / "npid.pth.tar", source, memory, monkeypatch)
    assert main([str(tmp_path / "npid.pth.tar"), str(tmp_path / "npid.ckpt")]) == 0
    (tmp_path / "npid.pth.tar").unlink()
    checkpoint = torch.load(tmp_path / "npid.ckpt", weights_only=True)  # tensors and plain values only
    assert checkpoint["hyper_parameters"]["_class_path"] == "fam_lightning.models.MemoryBankModel"
    assert checkpoint["datamodule_hyper_parameters"]["image_size"] == 224
    images = torch.randn(2, 3, 64, 64)
    for model in (MemoryBankModel.load_from_checkpoint(tmp_path / "npid.ckpt").eval(),
                  load_model(tmp_path / "npid.ckpt")):  # the fam-* tools' reader: the class named in the file
        assert isinstance(model, MemoryBankModel)
        torch.testing.assert_close(model(images), embed(source, images), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.bank.bank, memory)
    assert read_checkpoint(tmp_path / "npid.ckpt")["hyper_parameters"]["import_checkpoint"] is None

    write_moco_checkpoint(tmp_path / "moco.pth.tar", source_resnet18("mlp", seed=0), None, "")
    capsys.readouterr()
    assert main([str(tmp_path / "moco.pth.tar"), str(tmp_path / "moco.ckpt")]) == 2
    assert "pass --bank-size" in capsys.readouterr().err and not (tmp_path / "moco.ckpt").exists()
    assert main([str(tmp_path / "moco.pth.tar"), str(tmp_path / "moco.ckpt"), "--bank-size", "20"]) == 0
    checkpoint = torch.load(tmp_path / "moco.ckpt", weights_only=True)
    assert checkpoint["memory_bank_filled"] is False and checkpoint["hyper_parameters"]["head"] == "mlp"
    assert not MemoryBankModel.load_from_checkpoint(tmp_path / "moco.ckpt").bank_filled
