"""FewShotDataModule on a tiny synthetic data set written under pytest's tmp_path."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from fam_lightning.datamodules.formats.images import IMAGENET_MEAN, IMAGENET_STD
from fam_lightning.datamodules.fewshot import FewShotDataModule

TINY = {
    "image_size": 32,
    "synthetic_classes": 16,
    "synthetic_images_per_class": 8,
    "synthetic_image_size": 40,
    "train_ways": 3,
    "train_shots": 1,
    "train_queries": 2,
    "eval_ways": 3,
    "eval_shots": 1,
    "eval_queries": 3,
    "train_episodes": 4,
    "val_episodes": 3,
    "test_episodes": 5,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fewshot_data")


@pytest.fixture
def datamodule(data_dir: Path) -> FewShotDataModule:
    return FewShotDataModule(data_dir=str(data_dir), **TINY)


def test_num_base_classes_is_known_before_setup(datamodule: FewShotDataModule) -> None:
    assert datamodule.num_base_classes == 8
    assert datamodule.data_root.is_dir()
    assert datamodule.mean == IMAGENET_MEAN and datamodule.std == IMAGENET_STD


@pytest.mark.parametrize(
    ("loader", "queries", "count"),
    [("train_dataloader", 2, 4), ("val_dataloader", 3, 3), ("test_dataloader", 3, 5)],
)
def test_each_dataloader_yields_episodes(datamodule: FewShotDataModule, loader: str, queries: int, count: int) -> None:
    datamodule.prepare_data()
    datamodule.setup()
    dataloader = getattr(datamodule, loader)()
    assert len(dataloader) == count
    episode = next(iter(dataloader))
    assert episode["support"].shape == (3, 3, 32, 32)
    assert episode["query"].shape == (3 * queries, 3, 32, 32)
    assert episode["query_target"].tolist() == torch.arange(3).repeat_interleave(queries).tolist()
    assert episode["support_box"].shape == (3, 4) and episode["query_box"].shape == (3 * queries, 4)
    assert 0 <= int(episode["support_class"].min()) and int(episode["support_class"].max()) < 4 + 4 * (
        loader == "train_dataloader"
    )


def test_validation_episodes_repeat_across_epochs(datamodule: FewShotDataModule) -> None:
    datamodule.setup("validate")
    first = [e["query_index"] for e in datamodule.val_dataloader()]
    second = [e["query_index"] for e in datamodule.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_probe_episode_is_deterministic(data_dir: Path) -> None:
    one = FewShotDataModule(data_dir=str(data_dir), **TINY).probe_episode()
    other_module = FewShotDataModule(data_dir=str(data_dir), **TINY)
    two, three = other_module.probe_episode(), other_module.probe_episode()
    assert torch.equal(one["support"], two["support"]) and torch.equal(two["query"], three["query"])
    assert one["support"].shape == (3, 3, 32, 32) and one["query"].shape == (9, 3, 32, 32)


def test_too_large_episode_fails_at_setup(data_dir: Path) -> None:
    datamodule = FewShotDataModule(data_dir=str(data_dir), **{**TINY, "eval_queries": 20})
    with pytest.raises(ValueError, match=r"3-way 1-shot 20-query \(21 images per class\).*split 'val'"):
        datamodule.setup("validate")


def test_missing_real_root_is_named(tmp_path: Path) -> None:
    datamodule = FewShotDataModule(root=str(tmp_path / "CUB_200_2011"))
    with pytest.raises(FileNotFoundError, match="CUB_200_2011"):
        datamodule.setup("fit")


def test_init_arguments_are_typed_with_defaults() -> None:
    # LightningCLI / jsonargparse reads these from YAML: every argument needs a type and a default.
    for parameter in list(inspect.signature(FewShotDataModule.__init__).parameters.values())[1:]:
        assert parameter.annotation is not inspect.Parameter.empty, parameter.name
        assert parameter.default is not inspect.Parameter.empty, parameter.name


def test_shuffle_labels_permutes_only_the_training_labels(data_dir: Path) -> None:
    true = FewShotDataModule(data_dir=str(data_dir), **TINY)
    shuffled = FewShotDataModule(data_dir=str(data_dir), **TINY, shuffle_labels=True)
    for module in (true, shuffled):
        module.setup("fit")
    true_train, shuffled_train = true._image_set("train").labels, shuffled._image_set("train").labels
    # a permutation: every class keeps its size, but images change class
    assert torch.equal(true_train.sort().values, shuffled_train.sort().values)
    assert (true_train != shuffled_train).float().mean() > 0.5
    # episodes are drawn from the shuffled classes: a way's images share a shuffled label, not a true one
    episode = shuffled._episode_set("train")
    mixed = 0
    for seed in range(5):
        classes, support, query = episode.sample_indices(0, episode_seed=seed)
        assert torch.equal(shuffled_train[support], classes.repeat_interleave(TINY["train_shots"]))
        assert torch.equal(shuffled_train[query], classes.repeat_interleave(TINY["train_queries"]))
        rows = torch.cat([support.view(TINY["train_ways"], -1), query.view(TINY["train_ways"], -1)], dim=1)
        mixed += sum(len(true_train[way].unique()) > 1 for way in rows)
    assert mixed > 0
    # validation keeps the true labels, and the permutation is fixed by the seed
    assert torch.equal(true._image_set("val").labels, shuffled._image_set("val").labels)
    again = FewShotDataModule(data_dir=str(data_dir), **TINY, shuffle_labels=True)
    again.setup("fit")
    assert torch.equal(again._image_set("train").labels, shuffled_train)
