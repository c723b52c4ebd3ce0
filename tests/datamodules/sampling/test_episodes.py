"""Episodic sampling on an in-memory labelled data set (no images on disk)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from fam_lightning.datamodules.sampling.episodes import EpisodeDataset


class TinyLabelled:
    """Image i is filled with the value i, so every row of an episode says where it came from."""

    def __init__(self, counts: list[int], size: int = 8, split: str = "val") -> None:
        self.labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
        self.size = size
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": torch.full((3, self.size, self.size), float(index)),
            "label": int(self.labels[index]),
            "box": torch.tensor([0.0, 1.0, 2.0, 3.0]) + index,
        }


@pytest.fixture
def data() -> TinyLabelled:
    return TinyLabelled([10] * 8)


def test_episode_shapes_and_targets(data: TinyLabelled) -> None:
    episode = EpisodeDataset(data, ways=5, shots=2, queries=3, num_episodes=4, seed=0)[1]
    assert episode["support"].shape == (10, 3, 8, 8)
    assert episode["query"].shape == (15, 3, 8, 8)
    assert episode["support_box"].shape == (10, 4) and episode["query_box"].shape == (15, 4)
    assert episode["support_target"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert episode["query_target"].tolist() == torch.arange(5).repeat_interleave(3).tolist()
    assert episode["support_target"].dtype == torch.long and episode["support_class"].dtype == torch.long
    assert (episode["ways"], episode["shots"], episode["queries"]) == (5, 2, 3)


def test_episode_is_class_major_and_consistent(data: TinyLabelled) -> None:
    episode = EpisodeDataset(data, ways=4, shots=3, queries=2, num_episodes=1, seed=1)[0]
    for role, per_way in (("support", 3), ("query", 2)):
        rows = episode[f"{role}"][:, 0, 0, 0].long()
        assert torch.equal(rows, episode[f"{role}_index"])
        assert torch.equal(data.labels[rows], episode[f"{role}_class"])
        assert torch.equal(episode[f"{role}_box"][:, 0], rows.float())
        per_class = episode[f"{role}_class"].view(4, per_way)
        assert (per_class == per_class[:, :1]).all()
    way_classes = episode["support_class"][::3]
    assert len(set(way_classes.tolist())) == 4
    assert torch.equal(episode["query_class"][::2], way_classes)


def test_support_and_query_are_disjoint(data: TinyLabelled) -> None:
    episodes = EpisodeDataset(data, ways=5, shots=5, queries=5, num_episodes=20, seed=3)
    for i in range(len(episodes)):
        _, support, query = episodes.sample_indices(i)
        rows = torch.cat([support, query]).tolist()
        assert len(set(rows)) == len(rows) == 50


def test_seeded_episodes_are_fixed_per_index(data: TinyLabelled) -> None:
    a = EpisodeDataset(data, ways=5, shots=1, queries=2, num_episodes=10, seed=7)
    b = EpisodeDataset(data, ways=5, shots=1, queries=2, num_episodes=10, seed=7)
    assert torch.equal(a[3]["support"], b[3]["support"]) and torch.equal(a[3]["query"], b[3]["query"])
    assert torch.equal(a[3]["query_index"], b[3]["query_index"])
    assert not torch.equal(a[3]["query_index"], a[4]["query_index"])
    other = EpisodeDataset(data, ways=5, shots=1, queries=2, num_episodes=10, seed=8)
    assert not torch.equal(a[3]["query_index"], other[3]["query_index"])


def test_unseeded_episodes_are_fresh_and_repeat_under_a_global_seed(data: TinyLabelled) -> None:
    torch.manual_seed(123)
    episodes = EpisodeDataset(data, ways=5, shots=1, queries=2, num_episodes=10)
    first = [episodes.sample_indices(0)[2] for _ in range(3)]
    assert len({tuple(x.tolist()) for x in first}) == 3
    torch.manual_seed(123)
    again = EpisodeDataset(data, ways=5, shots=1, queries=2, num_episodes=10)
    assert all(torch.equal(x, again.sample_indices(0)[2]) for x in first)


def test_workers_draw_different_episodes(data: TinyLabelled) -> None:
    torch.manual_seed(0)
    episodes = EpisodeDataset(data, ways=5, shots=1, queries=2, num_episodes=4)
    episodes.sample_indices(0)  # a generator made in the parent must not be shared by the workers
    loader = DataLoader(episodes, batch_size=None, num_workers=2)
    rows = [tuple(e["query_index"].tolist()) for e in loader]
    assert len(set(rows)) == 4


def test_only_classes_with_enough_images_are_used() -> None:
    data = TinyLabelled([10, 2, 10, 10, 3, 10, 10])
    episodes = EpisodeDataset(data, ways=5, shots=1, queries=3, num_episodes=30, seed=0)
    assert episodes.num_eligible_classes == 5
    used = {c for i in range(30) for c in episodes.sample_indices(i)[0].tolist()}
    assert used == {0, 2, 3, 5, 6}


def test_too_large_episode_names_the_numbers() -> None:
    data = TinyLabelled([16, 16, 16, 12, 12, 12], split="val")
    message = (
        r"5-way 1-shot 15-query \(16 images per class\) but only 3 classes of split 'val' have >= 16 images"
        r".*smallest class has 12"
    )
    with pytest.raises(ValueError, match=message):
        EpisodeDataset(data, ways=5, shots=1, queries=15, num_episodes=1)
    with pytest.raises(ValueError, match="shots must be >= 1, got 0"):
        EpisodeDataset(data, ways=2, shots=0, queries=1, num_episodes=1)


def test_distributed_sampler_splits_episodes_across_ranks(data: TinyLabelled) -> None:
    episodes = EpisodeDataset(data, ways=3, shots=1, queries=1, num_episodes=10, seed=0)
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(episodes, num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(episodes, batch_size=None, sampler=sampler)
        per_rank.append(list(sampler))
        batches = list(loader)
        assert len(batches) == 5 and batches[0]["support"].shape == (3, 3, 8, 8)
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(10))


class NamedLabelled(TinyLabelled):
    """TinyLabelled with the class names / ids of a CUB split (a class may have no image at all)."""

    def __init__(self, counts: list[int], split: str = "val") -> None:
        super().__init__(counts, split=split)
        self.num_classes = len(counts)
        self.classes = [f"Bird_{c}" for c in range(len(counts))]
        self.class_ids = [10 + c for c in range(len(counts))]


def test_classes_that_can_never_appear_in_an_episode_are_named() -> None:
    from fam_lightning.datamodules.formats.checks import DataCheckWarning

    data = NamedLabelled([4, 1, 4, 4, 0, 4], split="val")  # 1 image, and none, under 1 shot + 1 query
    with pytest.warns(DataCheckWarning) as caught:
        episodes = EpisodeDataset(data, ways=3, shots=1, queries=1, num_episodes=4, seed=0)
    (message,) = [str(w.message) for w in caught]
    assert "2 classes of split 'val' can never appear in a 3-way 1-shot 1-query episode" in message
    assert "id 11 ('Bird_1'): 1 image" in message and "id 14 ('Bird_4'): 0 images" in message
    assert episodes.num_eligible_classes == 4


def test_an_empty_training_class_is_an_error_naming_it() -> None:
    data = NamedLabelled([4, 4, 0, 4], split="base")
    with pytest.raises(ValueError, match=r"class id 12 \('Bird_2'\) of split 'base' has no images"):
        EpisodeDataset(data, ways=2, shots=1, queries=1, num_episodes=4, empty_classes_error=True)


def test_fewshot_datamodule_names_an_empty_base_class(tmp_path) -> None:
    import shutil

    from fam_lightning.datamodules import FewShotDataModule
    from fam_lightning.datamodules.synthetic.cub_layout import write_synthetic_cub

    root = tmp_path / "cub"
    shutil.copytree(write_synthetic_cub(tmp_path / "synthetic", num_classes=8, images_per_class=4, image_size=24), root)
    labels = dict(line.split() for line in (root / "image_class_labels.txt").read_text().splitlines())
    dropped = {image for image, label in labels.items() if label == "1"}  # class 1 is the first base class
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        path = root / name
        path.write_text("".join(f"{line}\n" for line in path.read_text().splitlines() if line.split()[0] not in dropped))
    data = FewShotDataModule(root=str(root), image_size=16, train_ways=2, train_shots=1, train_queries=1,
                             eval_ways=2, eval_shots=1, eval_queries=1)
    with pytest.raises(ValueError, match=r"class id 1 \(.*\) of split 'base' has no images"):
        data.setup("fit")
