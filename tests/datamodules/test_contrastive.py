"""Contrastive augmentation and ContrastiveDataModule on a tiny synthetic ImageNet-layout data set."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from fam_lightning.datamodules.contrastive import ContrastiveDataModule, TwoViewTransform, contrastive_augmentation
from fam_lightning.datamodules.formats.images import IMAGENET_MEAN, IMAGENET_STD

TINY = {
    "image_size": 32,
    "batch_size": 5,
    "synthetic_classes": 4,
    "synthetic_train_per_class": 6,
    "synthetic_val_per_class": 3,
    "synthetic_image_size": 40,
}
NUM_TRAIN, NUM_VAL = 4 * 6, 4 * 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contrastive_data")


@pytest.fixture
def datamodule(data_dir: Path) -> ContrastiveDataModule:
    return ContrastiveDataModule(data_dir=str(data_dir), **TINY)


def test_views_differ_but_share_shape() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    for blur in (False, True):
        view1, view2 = TwoViewTransform(contrastive_augmentation(24, gaussian_blur=blur))(image)
        assert view1.shape == view2.shape == (3, 24, 24)
        assert view1.dtype == torch.float32 and torch.isfinite(view1).all()
        assert not torch.equal(view1, view2)


def test_augmentation_is_normalised() -> None:
    torch.manual_seed(1)
    grey = torch.full((3, 40, 40), 128, dtype=torch.uint8)  # jitter moves it a little, never far
    view = contrastive_augmentation(16)(grey)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = view * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_sizes_are_known_before_setup(datamodule: ContrastiveDataModule) -> None:
    assert datamodule.num_train_images == NUM_TRAIN
    assert datamodule.num_classes == 4
    assert datamodule.train_labels.tolist() == torch.arange(4).repeat_interleave(6).tolist()
    assert datamodule.data_root.name.startswith("synthetic_imagenet-c4-tr6-va3-s40-d3-seed0-v")
    assert datamodule.mean == IMAGENET_MEAN and datamodule.std == IMAGENET_STD


@pytest.mark.parametrize("two_views", [True, False])
def test_train_loader_yields_views_with_indices_and_drops_last(data_dir: Path, two_views: bool) -> None:
    datamodule = ContrastiveDataModule(data_dir=str(data_dir), two_views=two_views, **TINY)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == NUM_TRAIN // 5  # 24 images, batches of 5: the last 4 are dropped
    keys = {"view1", "view2", "label", "index"} if two_views else {"image", "label", "index"}
    seen = []
    for batch in batches:
        assert set(batch) == keys
        for key in keys - {"label", "index"}:
            assert batch[key].shape == (5, 3, 32, 32)
        assert batch["index"].dtype == torch.long and batch["label"].shape == (5,)
        assert torch.equal(batch["label"], datamodule.train_labels[batch["index"]])
        seen += batch["index"].tolist()
    assert len(set(seen)) == 20 and sorted(seen) != seen  # distinct, shuffled
    if two_views:
        assert not torch.equal(batches[0]["view1"], batches[0]["view2"])


def test_val_loaders_are_val_with_boxes_then_train_bank(datamodule: ContrastiveDataModule) -> None:
    datamodule.setup("validate")
    val_loader, bank_loader = datamodule.val_dataloader()
    val_batches = list(val_loader)
    assert sum(len(b["index"]) for b in val_batches) == NUM_VAL  # no drop_last in evaluation
    batch = val_batches[0]
    assert set(batch) == {"image", "label", "index", "boxes"}
    assert batch["image"].shape == (5, 3, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["label"].tolist() == [0, 0, 0, 1, 1]
    assert len(batch["boxes"]) == 5
    for boxes in batch["boxes"]:
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) >= 1
        assert (boxes[:, :2] < boxes[:, 2:]).all() and boxes.min() >= 0 and boxes.max() <= 32
    bank = list(bank_loader)
    assert all(set(b) == {"image", "label", "index"} for b in bank)
    assert torch.cat([b["index"] for b in bank]).tolist() == list(range(NUM_TRAIN))  # in order, un-shuffled
    assert torch.equal(torch.cat([b["label"] for b in bank]), datamodule.train_labels)
    # Un-augmented: the same image twice.
    assert torch.equal(next(iter(bank_loader))["image"], bank[0]["image"])


def test_bank_loader_can_be_left_out(data_dir: Path) -> None:
    datamodule = ContrastiveDataModule(data_dir=str(data_dir), bank_loader=False, **TINY)
    datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    assert len(loaders) == 1 and "boxes" in next(iter(loaders[0]))


def test_probe_batch_is_fixed_and_spans_classes(data_dir: Path) -> None:
    one = ContrastiveDataModule(data_dir=str(data_dir), **TINY).probe_batch()
    two = ContrastiveDataModule(data_dir=str(data_dir), **TINY).probe_batch()
    assert one["image"].shape == (8, 3, 32, 32) and len(one["boxes"]) == 8
    assert torch.equal(one["image"], two["image"]) and torch.equal(one["index"], two["index"])
    assert set(one["label"].tolist()) == {0, 1, 2, 3}


def test_train_images_are_the_bank_rows(datamodule: ContrastiveDataModule) -> None:
    datamodule.setup("validate")
    bank = next(iter(datamodule.val_dataloader()[1]))  # rows 0..4
    images = datamodule.train_images(torch.tensor([3, 0]))
    assert images.shape == (2, 3, 32, 32)
    assert torch.equal(images[0], bank["image"][3]) and torch.equal(images[1], bank["image"][0])


def test_batch_larger_than_the_training_set_fails_at_setup(data_dir: Path) -> None:
    datamodule = ContrastiveDataModule(data_dir=str(data_dir), **{**TINY, "batch_size": 25})
    with pytest.raises(ValueError, match=r"batch_size=25 exceeds the 24 training images"):
        datamodule.setup("fit")


def test_missing_real_root_is_named(tmp_path: Path) -> None:
    datamodule = ContrastiveDataModule(root=str(tmp_path / "ILSVRC2012"))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012"):
        datamodule.num_train_images


def test_init_arguments_are_typed_with_defaults() -> None:
    # LightningCLI / jsonargparse reads these from YAML: every argument needs a type and a default.
    for parameter in list(inspect.signature(ContrastiveDataModule.__init__).parameters.values())[1:]:
        assert parameter.annotation is not inspect.Parameter.empty, parameter.name
        assert parameter.default is not inspect.Parameter.empty, parameter.name


def test_colour_preserving_augmentation_keeps_the_hue() -> None:
    """Without hue / saturation jitter and grayscale a red image stays red in every view (the synthetic recipe)."""
    torch.manual_seed(0)
    red = torch.zeros(3, 48, 48, dtype=torch.uint8)
    red[0] = 220
    keep = contrastive_augmentation(32, crop_scale=(0.5, 1.0), color_jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for _ in range(20):
        rgb = keep(red) * std + mean
        assert bool((rgb[0] > rgb[1] + 0.3).all() and (rgb[0] > rgb[2] + 0.3).all())
    default = contrastive_augmentation(32)  # MoCo v1's grayscale (p = 0.2) turns some views grey
    greys = sum(bool(((default(red) * std + mean).std(0) < 1e-3).all()) for _ in range(40))
    assert 0 < greys < 40


@pytest.mark.parametrize(
    "kwargs, named",
    [({"crop_scale": (0.0, 1.0)}, "crop_scale"), ({"crop_scale": (0.8, 0.5)}, "crop_scale"),
     ({"color_jitter": (0.4, 0.4, 0.4)}, "color_jitter"), ({"color_jitter": (0.4, 0.4, 0.4, 0.7)}, "color_jitter"),
     ({"grayscale_p": 1.5}, "grayscale_p"), ({"color_jitter_p": -0.1}, "color_jitter_p")],
)
def test_bad_augmentation_strengths_are_named(kwargs: dict, named: str, data_dir: Path) -> None:
    with pytest.raises(ValueError, match=named):
        contrastive_augmentation(32, **kwargs)
    with pytest.raises(ValueError, match=named):  # the data module checks them when built
        ContrastiveDataModule(data_dir=str(data_dir), image_size=32, **kwargs)
