"""MemoryBankModel (NPID, MoCo): training updates, kNN explanation, checkpoint, errors, DDP."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from fam_lightning.explainers import FAMExplainer
from fam_lightning.models import MemoryBankModel
from fam_lightning.similarity import mean_similarity
from tests.helpers.cli import REPO, run_process
from tests.helpers.events import read_events


def _model(method: str = "npid", head: str = "linear") -> MemoryBankModel:
    torch.manual_seed(0)
    model = MemoryBankModel(method=method, backbone="conv4", head=head, bank_size=40, num_classes=4,
                            nce_negatives=16, queue_size=16, knn_k=10)
    model.bank.set_labels(torch.arange(40) % 4)
    model.log = lambda *a, **k: None
    return model


def _batch(two_views: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {"index": torch.tensor([0, 5, 9, 13, 21, 30, 33, 39]), "label": torch.tensor([0, 1, 1, 1, 1, 2, 1, 3])}
    if two_views:
        batch["view1"] = torch.randn(8, 3, 32, 32, generator=g)
        batch["view2"] = torch.randn(8, 3, 32, 32, generator=g)
    else:
        batch["image"] = torch.randn(8, 3, 32, 32, generator=g)
    return batch


def test_npid_step_updates_the_bank_rows_of_the_batch_with_momentum() -> None:
    model = _model("npid")
    before = model.bank.bank.clone()
    batch = _batch()
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss) and model.nce_normalizer > 0
    loss.backward()
    changed = (model.bank.bank != before).any(1)
    assert changed[batch["index"]].all() and changed.sum() == 8
    torch.testing.assert_close(model.bank.bank.norm(dim=1), torch.ones(40))
    z = model(batch["image"]).detach()
    expected = F.normalize(0.5 * before[batch["index"]] + 0.5 * z, dim=1)
    torch.testing.assert_close(model.bank.bank[batch["index"]], expected, atol=1e-5, rtol=1e-5)


def test_moco_step_ema_queue_and_bank() -> None:
    model = _model("moco", head="mlp")
    key_before = [p.clone() for p in model.key_backbone.parameters()]
    online = [p.clone() for p in model.backbone.parameters()]
    loss = model.training_step(_batch(two_views=True), 0)
    assert torch.isfinite(loss)
    m = model.hparams.encoder_momentum
    for kb, p, ka in zip(key_before, online, model.key_backbone.parameters()):
        torch.testing.assert_close(ka, m * kb + (1 - m) * p)
    assert int(model.queue.ptr) == 8
    assert all(p.grad is None for p in model.key_backbone.parameters())


def test_knn_explanation_references_are_the_predicted_class_neighbours() -> None:
    model = _model("npid").eval()
    batch = _batch()
    model.on_validation_epoch_start()
    with torch.inference_mode():
        out = model.validation_step(batch, 0)
    inputs = out["explain"]
    scores, rows, votes = model.knn(inputs.embeddings)
    predicted = scores.argmax(1)
    same = model.bank.labels[rows] == predicted.unsqueeze(1)
    assert torch.equal(inputs.reference_weights > 0, same & (votes > 0))
    # FAM weights through the linear head: sum = weighted mean cosine minus the bias share
    weights = FAMExplainer(model).weights(inputs.feature_maps, inputs.references, inputs.reference_weights)
    v = inputs.embeddings
    mix = inputs.reference_weights / inputs.reference_weights.sum(1, keepdim=True)
    beta = (mix.unsqueeze(2) * F.normalize(inputs.references, dim=2)).sum(1) / v.norm(dim=1, keepdim=True)
    total = mean_similarity(v, inputs.references, "cosine", inputs.reference_weights)
    torch.testing.assert_close(weights.sum(1), total - (beta * model.projection.bias).sum(1), atol=1e-5, rtol=1e-4)


def test_mlp_head_explanations_inside_inference_mode() -> None:
    model = _model("moco", head="mlp").eval()
    model.on_validation_epoch_start()
    with torch.inference_mode():
        inputs = model.validation_step(_batch(), 0)["explain"]
        maps = FAMExplainer(model).from_feature_maps(
            inputs.feature_maps, inputs.references, inputs.reference_weights, size=(32, 32))
    assert maps.shape == (8, 32, 32) and torch.isfinite(maps).all()


def test_clear_errors() -> None:
    model = _model("npid")
    with pytest.raises(ValueError, match="memory bank has 40 entries but the training set has 50"):
        model.bank.check_dataset_size(50)
    model.hparams.knn_k = 41
    model.on_validation_epoch_start()
    with pytest.raises(ValueError, match="knn_k=41 is larger than the memory bank"):
        model.knn(torch.randn(2, 128))
    with pytest.raises(ValueError, match="not divisible"):
        _model("moco").queue.check_batch(12)


def test_checkpoint_restores_bank_and_queue_exactly(tmp_path: Path) -> None:
    model = _model("moco")
    model.training_step(_batch(two_views=True), 0)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = MemoryBankModel.load_from_checkpoint(tmp_path / "m.ckpt")
    for name in ("bank.bank", "bank.labels", "queue.queue", "queue.ptr"):
        assert torch.equal(restored.state_dict()[name], model.state_dict()[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["npid"])  # MoCo's bank and queue on two ranks: tests/e2e/test_multinode.py
def test_two_process_ddp_fit_every_rank_ends_with_the_same_bank(method: str, tmp_path: Path, data_dir: Path) -> None:
    dump = tmp_path / "banks"
    run_process(
        ["fit", "--config", str(REPO / "configs" / "contrastive" / f"{method}_synthetic.yaml"),
         "--data.data_dir", str(data_dir), "--data.image_size", "32", "--data.batch_size", "16",
         "--data.synthetic_train_per_class", "8", "--data.synthetic_val_per_class", "4",
         "--model.init_args.knn_k", "10", "--model.init_args.nce_negatives", "16",
         "--model.init_args.queue_size", "64", "--data.num_workers", "0",
         "--data.local_crop", "0.5", "--trainer.check_val_every_n_epoch", "1",  # 16 px views of 2 x 2 cells here
         "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
         "--trainer.strategy", "ddp", "--trainer.log_every_n_steps", "1",
         "--trainer.callbacks+=tests.helpers.callbacks.DumpBank", f"--trainer.callbacks.out_dir={dump}"],
        cwd=tmp_path,
    )
    rank0, rank1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert "memory" in rank0 and rank0["memory"].shape[0] == 9 * rank0["bank"].shape[0]  # a row per part
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert (rank0["labels"] >= 0).all()
    scalars, images = read_events(tmp_path / "logs" / f"{method}_synthetic" / "version_0")
    assert "val/knn_top1" in scalars and "val/fam_energy_pointing_game" in scalars
    assert images["val/fam_probe"]


def test_test_stage_logs_knn_accuracy(tmp_path: Path) -> None:
    model = _model("npid").eval()
    model.on_test_epoch_start()
    with torch.inference_mode():
        out = model.test_step(_batch(), 0)
    assert out["explain"].references.shape == (8, 10, 128)
    assert model.val_top1.update_called


def test_gmp_pooling_feeds_the_head_and_the_key_encoder() -> None:
    torch.manual_seed(0)
    model = MemoryBankModel(method="moco", backbone="conv4", head="mlp", pooling="gmp", bank_size=40, num_classes=4,
                            queue_size=16, knn_k=10)
    model.log = lambda *a, **k: None
    images = _batch(two_views=True)["view1"]
    maps = model.forward_features(images)
    torch.testing.assert_close(model(images), F.normalize(model.projection(maps.amax(dim=(2, 3))), dim=1))
    model.training_step(_batch(two_views=True), 0)
    keys = model.queue.queue[:8]  # the first enqueued keys: the key encoder, max-pooled
    batch = _batch(two_views=True)
    expected = F.normalize(model.key_projection(model.key_backbone.forward_features(batch["view2"]).amax(dim=(2, 3))))
    torch.testing.assert_close(keys, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling must be 'gap' or 'gmp'"):
        MemoryBankModel(method="moco", backbone="conv4", pooling="lse")


def test_refresh_bank_recomputes_the_knn_bank_from_the_training_images_before_evaluating() -> None:
    class Images:
        def __init__(self) -> None:
            self.batch_size = 16
            self.images = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(3))

        def train_images(self, rows: torch.Tensor) -> torch.Tensor:
            return self.images[rows]

    data = Images()
    model = MemoryBankModel(method="moco", backbone="conv4", refresh_bank=True, bank_size=40, num_classes=4,
                            queue_size=16, knn_k=10)
    model.log = lambda *a, **k: None
    model.bank.set_labels(torch.arange(40) % 4)
    model.attach_datamodule(data)
    model.training_step(_batch(two_views=True), 0)  # trains; the bank is left to the refresh
    model.eval()
    model.on_validation_epoch_start()
    with torch.no_grad():
        torch.testing.assert_close(model.bank.bank, model(data.images), atol=1e-5, rtol=1e-5)


def test_npid_with_refresh_bank_trains_a_memory_row_per_part_of_an_image_apart_from_the_knn_bank() -> None:
    class Images:
        batch_size, instances_per_image = 16, 4
        images = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(3))

        def train_images(self, rows: torch.Tensor) -> torch.Tensor:
            return self.images[rows]

    torch.manual_seed(0)
    model = MemoryBankModel(method="npid", backbone="conv4", pooling="gmp", loss_pooling="gap", refresh_bank=True,
                            knn_embedding="backbone", bank_size=40, num_classes=4, nce_negatives=16, knn_k=10,
                            npid_loss="softmax")
    model.log = lambda *a, **k: None
    model._take_instances(Images.instances_per_image)  # what setup reads from the data module
    assert model.memory.bank.shape == (160, 128) and model.bank.bank.shape == (40, 64)
    assert model.hparams.instances_per_image == 4
    batch = _batch()
    batch["instance"] = batch["index"] * 4 + torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    memory, bank = model.memory.bank.clone(), model.bank.bank.clone()
    with torch.no_grad():  # the loss embedding: GAP over the view, then the head
        z = F.normalize(model.loss_head(model.forward_features(batch["image"]).mean(dim=(2, 3))), dim=1)
    model.training_step(batch, 0)
    rows = batch["instance"]
    torch.testing.assert_close(model.memory.bank[rows], F.normalize(0.5 * memory[rows] + 0.5 * z, dim=1),
                               atol=1e-5, rtol=1e-5)  # NPID's rule, on the rows of those parts
    untouched = torch.ones(160, dtype=torch.bool).index_fill_(0, rows, False)
    assert torch.equal(model.memory.bank[untouched], memory[untouched])
    assert torch.equal(model.bank.bank, bank)  # training does not write the kNN bank
    model.bank.set_labels(torch.arange(40) % 4)
    model.attach_datamodule(Images())
    model.eval()
    trained = model.memory.bank.clone()
    model.on_validation_epoch_start()
    with torch.no_grad():  # the kNN bank: max-pooled backbone features of the whole images; the memory kept
        torch.testing.assert_close(model.bank.bank, F.normalize(model.forward_features(Images.images).amax(dim=(2, 3))),
                                   atol=1e-5, rtol=1e-5)
    assert torch.equal(model.memory.bank, trained)
    with pytest.raises(ValueError, match="instances_per_image=4 but the data gives 9"):
        model._take_instances(9)
    moco = MemoryBankModel(method="moco", backbone="conv4", bank_size=40, queue_size=16)
    with pytest.raises(ValueError, match="only NPID with refresh_bank=True uses"):
        moco._take_instances(4)


def test_knn_on_backbone_features_trains_the_head_and_compares_pooled_features() -> None:
    torch.manual_seed(0)
    model = MemoryBankModel(method="moco", backbone="conv4", head="mlp", pooling="gmp", refresh_bank=True,
                            knn_embedding="backbone", bank_size=40, num_classes=4, queue_size=16, knn_k=10)
    model.log = lambda *a, **k: None
    assert model.projection is None and model.bank.bank.shape == (40, 64)  # the protocol: pooled features, FC-free
    batch = _batch(two_views=True)
    maps = model.forward_features(batch["view1"])
    torch.testing.assert_close(model(batch["view1"]), F.normalize(maps.amax(dim=(2, 3)), dim=1))
    bank_before, head_before = model.bank.bank.clone(), [p.clone() for p in model.loss_head.parameters()]
    key_head_before = [p.clone() for p in model.key_projection.parameters()]
    loss = model.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in model.loss_head.parameters())  # the loss trains the head
    assert torch.equal(model.bank.bank, bank_before)  # keys are not written into a bank of features
    assert model.queue.queue.shape[1] == 128  # the queue holds head outputs
    m = model.hparams.encoder_momentum
    for k0, online, k1 in zip(key_head_before, head_before, model.key_projection.parameters()):
        torch.testing.assert_close(k1, m * k0 + (1 - m) * online)  # the key head follows the loss head
    with pytest.raises(ValueError, match="needs refresh_bank=True"):
        MemoryBankModel(method="moco", backbone="conv4", knn_embedding="backbone")
    with pytest.raises(ValueError, match="knn_embedding must be"):
        MemoryBankModel(method="moco", backbone="conv4", refresh_bank=True, knn_embedding="neck")


def test_loss_pooling_pools_the_training_views_apart_from_the_knn() -> None:
    torch.manual_seed(0)
    model = MemoryBankModel(method="moco", backbone="conv4", pooling="gmp", loss_pooling="gap", refresh_bank=True,
                            knn_embedding="backbone", bank_size=40, num_classes=4, queue_size=16, knn_k=10)
    model.log = lambda *a, **k: None
    batch = _batch(two_views=True)
    batch = {**batch, "view1": batch["view1"].repeat(1, 1, 2, 2), "view2": batch["view2"].repeat(1, 1, 2, 2)}  # 64 px
    model.training_step(batch, 0)
    maps = model.key_backbone.forward_features(batch["view2"])
    assert maps.shape[-1] == 4  # several positions, so GAP and GMP differ
    expected = F.normalize(model.key_projection(maps.mean(dim=(2, 3))), dim=1)
    torch.testing.assert_close(model.queue.queue[:8], expected, atol=1e-5, rtol=1e-5)
    knn_side = F.normalize(model.forward_features(batch["view1"]).amax(dim=(2, 3)), dim=1)
    torch.testing.assert_close(model(batch["view1"]), knn_side)  # the protocol (kNN, FAM) max-pools
    with pytest.raises(ValueError, match="needs refresh_bank=True"):
        MemoryBankModel(method="moco", backbone="conv4", pooling="gmp", loss_pooling="gap")


def test_views_too_small_for_the_backbone_are_named_before_training() -> None:
    model = _model("moco")
    model._check_view_size(16)  # Conv4's four pools: 16 -> 1
    model._check_view_size(None)  # a data module that does not say
    assert model.backbone.training
    with pytest.raises(ValueError, match=r"views of 8 x 8 px are too small for the backbone ConvNet.*local_crop"):
        model._check_view_size(8)
    assert model.backbone.training  # mode restored
