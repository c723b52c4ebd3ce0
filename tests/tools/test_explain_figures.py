"""fam-explain's figures: the decision per family (references, kNN vote, top-1 gallery image) with its class
names and reference images, the warnings for photos unlike the training data, enlarged small photos, colour bar."""

from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fam_lightning import fam
from fam_lightning.datamodules import ContrastiveDataModule, RetrievalDataModule
from fam_lightning.loading import load_model
from fam_lightning.models import MemoryBankModel, RetrievalModel
from fam_lightning.tools import explain
from fam_lightning.visualize import jet


def _save(path: Path, model: lightning.LightningModule, model_class: str, data: lightning.LightningDataModule,
          data_class: str) -> Path:
    """A checkpoint with the keys fam-train writes, for an untrained model and its data module."""
    hparams = dict(model.hparams) | {"_class_path": model_class,
                                     "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "datamodule_hyper_parameters": dict(data.hparams) | {"_class_path": data_class},
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def _decide(ckpt: Path, photo: Path) -> tuple:
    """The checkpoint's model and data module, and the photo's embedding (the inputs of a decision)."""
    model = load_model(ckpt)
    datamodule = explain.model_datamodule(torch.load(ckpt, weights_only=True), explain.Overrides())
    with torch.no_grad():
        embeddings = model.embed(model.forward_features(explain.read_photo(photo, 32).model_input[None]))
    return model, datamodule, embeddings


@pytest.fixture(scope="module")
def npid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("npid")
    data = ContrastiveDataModule(data_dir=str(folder / "data"), image_size=32, batch_size=8, two_views=False,
                                 synthetic_classes=4, synthetic_train_per_class=5, synthetic_val_per_class=2,
                                 synthetic_image_size=32, cache_images=True)
    torch.manual_seed(0)
    model = MemoryBankModel(method="npid", backbone="conv4", bank_size=data.num_train_images, num_classes=4,
                            knn_k=6, nce_negatives=8)
    model.bank.bank.copy_(F.normalize(torch.randn_like(model.bank.bank), dim=1))
    return _save(folder / "npid.ckpt", model, "fam_lightning.models.MemoryBankModel", data,
                 "fam_lightning.datamodules.ContrastiveDataModule")


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("retrieval")
    data = RetrievalDataModule(data_dir=str(folder / "data"), image_size=32, batch_size=16, synthetic_classes=6,
                               synthetic_images_per_class=3, synthetic_image_size=32, classes_per_batch=2,
                               samples_per_class=2, explain_queries=4)
    torch.manual_seed(0)
    model = RetrievalModel(backbone="conv4", embedding_dim=16)
    return _save(folder / "retrieval.ckpt", model, "fam_lightning.models.RetrievalModel", data,
                 "fam_lightning.datamodules.RetrievalDataModule")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    out = {}
    for name, (w, h) in {"small": (32, 32), "wide": (400, 100), "large": (500, 400)}.items():
        out[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(out[name])
    return out


def test_memory_bank_figure_shows_the_knn_vote_its_class_and_the_voters(
    npid: Path, photos: dict[str, Path], tmp_path: Path
) -> None:
    model, datamodule, embeddings = _decide(npid, photos["small"])
    decision = explain.knn_decision(model, datamodule, embeddings)
    scores, rows, votes = model.knn(embeddings)
    predicted = int(scores.argmax(1))
    names = explain.class_names(datamodule, "train")
    assert names is not None and len(names) == 4
    line = decision.lines[0][0]
    assert f"decision: class {names[predicted]!r} by a weighted kNN vote of the 6 nearest memory-bank images" in line
    assert "mean cosine similarity" not in " ".join(decision.lines[0])
    # the weights are the votes of the neighbours in the predicted class, the shown references the strongest
    same = model.bank.labels[rows] == predicted
    torch.testing.assert_close(decision.weights, votes * same)
    shown = decision.reference_panels[0]
    assert 1 <= len(shown) <= min(int(same.sum()), explain.MAX_REFERENCES_SHOWN)
    assert all(label.startswith("vote ") and image.shape == (3, 32, 32) for label, image in shown)

    written = explain.explain_files(model, [photos["small"]], ["fam", "gradcam"], tmp_path, image_size=32,
                                    decision="model", datamodule=datamodule)
    with Image.open(written[0]) as image:
        figure = np.asarray(image)
    assert figure.shape[1] >= 3 * 7 * 32  # photo | fam | gradcam, the 32 px photo enlarged 7x


def test_explain_without_references_explains_the_memory_bank_decision(
    npid: Path, photos: dict[str, Path], tmp_path: Path, capsys
) -> None:
    assert explain.main(["--ckpt_path", str(npid), "--images", str(photos["small"]), "--explainers", "fam",
                         "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "small.png").is_file()
    missing = tmp_path / "no_such_imagenet"
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(npid), "--images", str(photos["small"]), "--explainers", "fam",
                      "--out", str(tmp_path), "--device", "cpu", "--data.root", str(missing)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the model's own decision needs its data module" in last and str(missing) in last


def test_retrieval_figure_shows_the_top1_gallery_image_and_its_class(
    retrieval: Path, photos: dict[str, Path]
) -> None:
    model, datamodule, embeddings = _decide(retrieval, photos["large"])
    decision = explain.retrieval_decision(model, datamodule, embeddings)
    # brute force over the gallery (the test split) gives the same image
    test_set = datamodule._split("test")
    gallery = torch.stack([test_set[i]["image"] for i in range(len(test_set))])
    with torch.no_grad():
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(model(gallery), dim=1).T
    best = int(cosine.argmax())
    label = int(test_set[best]["label"])
    names = explain.class_names(datamodule, "test")
    assert f"retrieves gallery image {best} of class {names[label]!r}" in decision.lines[0][0]
    ((caption, image),) = decision.reference_panels[0]
    assert caption == f"top-1: {names[label]!r}" and image.shape == (3, 32, 32)
    assert decision.references.shape == (1, 1, 16)


def test_reference_wording_says_whose_decision_it_is(npid: Path, photos: dict[str, Path]) -> None:
    model = load_model(npid)
    photo, ref = explain.read_photo(photos["small"], 32), explain.read_photo(photos["large"], 32)
    with torch.no_grad():
        embeddings = model.embed(model.forward_features(photo.model_input[None]))
    decision = explain.reference_decision(model, embeddings, [ref])
    assert decision.lines[0][0].endswith("mean cosine similarity to 1 reference image (one class's supports)")
    assert "decides by a kNN vote over its memory bank" in decision.lines[0][1]


def test_photos_unlike_the_training_data_are_warned_about(photos: dict[str, Path]) -> None:
    trained = explain.training_geometry({"root": None, "synthetic_image_size": 96})
    assert trained == (96, 96) and explain.training_geometry({"root": "/no/such/CUB"}) is None
    wide = explain.look_warnings(explain.read_photo(photos["wide"], 84), 84, trained)
    assert len(wide) == 1 and "shape (400 x 100, aspect 4.00) is unlike the training images' (96 x 96)" in wide[0]
    large = explain.look_warnings(explain.read_photo(photos["large"], 84), 84, trained)
    assert len(large) == 1 and "at another scale" in large[0]
    small = explain.look_warnings(explain.read_photo(photos["small"], 84), 84, None)
    assert len(small) == 1 and "smaller than the model's 84 x 84 input" in small[0]
    assert explain.look_warnings(explain.read_photo(photos["small"], 32), 32, (32, 32)) == []


def test_small_photos_are_enlarged_by_a_whole_factor_and_the_figure_has_a_colour_bar(
    photos: dict[str, Path]
) -> None:
    small = explain.read_photo(photos["small"], 32)
    assert small.display_scale() == 7  # 32 px -> 224 px
    wide = explain.read_photo(photos["wide"], 32)
    assert wide.display_scale() == 2 and wide.display_scale(640) == 1  # 100 px high, but 400 px wide: <= 1024
    assert explain.read_photo(photos["large"], 32).display_scale() == 1
    shown = small.for_display()
    assert shown.pixels.shape == (3, 224, 224) and shown.crop == (0, 0, 224, 224)
    torch.testing.assert_close(shown.pixels[:, ::7, ::7], small.pixels)
    figure = np.asarray(explain.compose_figure([("image", shown.pixels)], ["header"], warnings=["warning: x"]))
    bottom = figure[-40:].reshape(-1, 3).astype(int)
    for end in (0.0, 1.0):  # both ends of the jet colour bar
        colour = (jet(torch.tensor([[end]]))[0, :, 0, 0] * 255).round().int().numpy()
        assert (np.abs(bottom - colour).max(1) <= 1).any()
    assert (np.abs(figure.reshape(-1, 3).astype(int) - explain.WARNING_COLOUR).max(1) == 0).any()  # the red warning


def test_the_size_of_a_real_data_sets_images_is_read_from_a_sample_of_headers(tmp_path: Path) -> None:
    from tests.datamodules.tiny_data import write_tiny_cub

    cub = write_tiny_cub(tmp_path / "cub")  # 60 x 40 images (one 200 x 100)
    assert explain.training_geometry({"root": str(cub)}) == (60, 40)
    imagenet = tmp_path / "imagenet" / "train"
    for wnid in ("n01", "n02"):
        (imagenet / wnid).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (500, 375)).save(imagenet / wnid / f"{wnid}_{k}.JPEG")
    assert explain.training_geometry({"root": str(imagenet.parent)}) == (500, 375)


@pytest.fixture(scope="module")
def moco_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MoCo v2 as moco_synthetic.yaml builds it: the kNN over max-pooled backbone features (no head), the
    bank recomputed from the training images; trained weights are not needed, only that kind of bank."""
    folder = tmp_path_factory.mktemp("moco")
    data = ContrastiveDataModule(data_dir=str(folder / "data"), image_size=32, batch_size=8, two_views=True,
                                 bank_loader=False, synthetic_classes=4, synthetic_train_per_class=5,
                                 synthetic_val_per_class=2, synthetic_image_size=32, cache_images=True)
    torch.manual_seed(0)
    model = MemoryBankModel(method="moco", backbone="conv4", head="mlp", embedding_dim=16, queue_size=8,
                            knn_k=6, pooling="gmp", loss_pooling="gap", knn_embedding="backbone",
                            refresh_bank=True, bank_size=data.num_train_images, num_classes=4)
    return _save(folder / "moco.ckpt", model, "fam_lightning.models.MemoryBankModel", data,
                 "fam_lightning.datamodules.ContrastiveDataModule")


def test_backbone_knn_figure_votes_over_the_recomputed_backbone_bank(
    moco_backbone: Path, photos: dict[str, Path], tmp_path: Path
) -> None:
    model, datamodule, embeddings = _decide(moco_backbone, photos["small"])
    # the decision is made on the max-pooled backbone features themselves: no head, the bank as wide
    assert model.projection is None and embeddings.shape == (1, model.backbone.out_channels)
    decision = explain.knn_decision(model, datamodule, embeddings)
    images = datamodule.train_images(torch.arange(datamodule.num_train_images))
    with torch.no_grad():  # the bank the vote ran over is this model's own features of the training images
        own = F.normalize(model.embed(model.forward_features(images)), dim=1)
    torch.testing.assert_close(model.bank.bank, own, atol=1e-5, rtol=1e-5)
    scores, rows, votes = model.knn(embeddings)
    predicted = int(scores.argmax(1))
    same = model.bank.labels[rows] == predicted
    torch.testing.assert_close(decision.weights, votes * same)
    torch.testing.assert_close(decision.references, own[rows])
    assert "weighted kNN vote of the 6 nearest memory-bank images" in decision.lines[0][0]
    # FAM on this decision is exact: its channel weights sum to the vote-weighted mean cosine similarity
    with torch.no_grad():
        pooled = fam.pool(model.forward_features(explain.read_photo(photos["small"], 32).model_input[None]), "gmp")
    weights = fam.contribution_weights(pooled, decision.references, similarity="cosine",
                                       reference_weights=decision.weights)
    cosine = F.cosine_similarity(pooled[:, None], decision.references, dim=-1)
    mean = (cosine * decision.weights).sum(1) / decision.weights.sum(1)
    torch.testing.assert_close(weights.sum(1), mean, atol=1e-5, rtol=1e-4)
    written = explain.explain_files(model, [photos["small"]], ["fam"], tmp_path, image_size=32,
                                    decision="model", datamodule=datamodule)
    assert written[0].is_file()
