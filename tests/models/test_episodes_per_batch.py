"""Several episodes per step: stacked batches, per-episode losses and accuracies, explanations, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fam_lightning.datamodules.sampling.episodes import collate_episodes
from fam_lightning.datamodules.fewshot import FewShotDataModule
from fam_lightning.metrics import EpisodeAccuracy
from fam_lightning.models import FewShotClassifier
from fam_lightning.reliability import NonFiniteCount
from tests.helpers.cli import REPO, SMALL_EPISODE_ARGS, TINY_DATA_ARGS, run_cli
from tests.helpers.events import read_events

WAYS, SHOTS, QUERIES, SIZE, CLASSES = 3, 2, 4, 32, 6

TINY = {
    "image_size": 32, "synthetic_classes": 16, "synthetic_images_per_class": 8, "synthetic_image_size": 40,
    "train_ways": 3, "train_shots": 1, "train_queries": 2, "eval_ways": 3, "eval_shots": 1, "eval_queries": 3,
    "train_episodes": 5, "val_episodes": 3, "test_episodes": 2,
}


def make_episode(seed: int) -> dict:
    """A random episode whose ways are classes ``seed % CLASSES ...`` (episodes differ in classes and images)."""
    g = torch.Generator().manual_seed(seed)
    classes = (torch.arange(WAYS) + seed) % CLASSES
    return {
        "support": torch.randn(WAYS * SHOTS, 3, SIZE, SIZE, generator=g),
        "query": torch.randn(WAYS * QUERIES, 3, SIZE, SIZE, generator=g),
        "support_target": torch.arange(WAYS).repeat_interleave(SHOTS),
        "query_target": torch.arange(WAYS).repeat_interleave(QUERIES),
        "support_class": classes.repeat_interleave(SHOTS),
        "query_class": classes.repeat_interleave(QUERIES),
        "support_box": torch.rand(WAYS * SHOTS, 4, generator=g) * 16 + torch.tensor([0.0, 0.0, 16.0, 16.0]),
        "query_box": torch.rand(WAYS * QUERIES, 4, generator=g) * 16 + torch.tensor([0.0, 0.0, 16.0, 16.0]),
        "ways": WAYS, "shots": SHOTS, "queries": QUERIES,
    }


def trained_model() -> FewShotClassifier:
    """A conv4 learner whose BatchNorm running statistics and weights are no longer the init ones."""
    torch.manual_seed(0)
    model = FewShotClassifier(backbone="conv4", num_classes=CLASSES).double()
    model.log = lambda *args, **kwargs: None  # no trainer to log to
    with torch.no_grad():
        model.training_step(_double(make_episode(7)), 0)  # moves the BN running statistics
        model.loss_weighting.log_vars.copy_(torch.tensor([0.3, -0.2]))  # unequal task weights
    return model


def _double(batch: dict) -> dict:
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def test_collate_stacks_episodes_and_keeps_the_shape_ints() -> None:
    batch = collate_episodes([make_episode(0), make_episode(1)])
    assert batch["support"].shape == (2, WAYS * SHOTS, 3, SIZE, SIZE)
    assert batch["query_target"].shape == (2, WAYS * QUERIES)
    assert batch["query_box"].shape == (2, WAYS * QUERIES, 4)
    assert (batch["ways"], batch["shots"], batch["queries"]) == (WAYS, SHOTS, QUERIES)
    torch.testing.assert_close(batch["query"][1], make_episode(1)["query"])


def test_collate_rejects_empty_and_mismatched_episodes() -> None:
    with pytest.raises(ValueError, match="at least one episode"):
        collate_episodes([])
    other = make_episode(1)
    other["shots"] = SHOTS + 1
    with pytest.raises(ValueError, match="ways / shots / queries"):
        collate_episodes([make_episode(0), other])
    unboxed = make_episode(1)
    del unboxed["query_box"]
    with pytest.raises(ValueError, match="keys"):
        collate_episodes([make_episode(0), unboxed])


def test_two_episode_loss_is_the_mean_of_the_single_episode_losses_in_eval_mode() -> None:
    model = trained_model().eval()  # BatchNorm uses running statistics: no episode sees the other
    episodes = [_double(make_episode(seed)) for seed in (0, 1)]
    with torch.no_grad():
        singles = torch.stack([model.training_step(e, 0) for e in episodes])
        stacked = model.training_step(collate_episodes(episodes), 0)
    assert not torch.allclose(singles[0], singles[1])  # a real mean, not of two equal numbers
    torch.testing.assert_close(stacked, singles.mean())


def test_train_mode_batchnorm_normalises_over_all_episodes() -> None:
    # Documented behaviour: in train mode E changes the BN statistics, hence the loss.
    model = trained_model().train()
    episodes = [_double(make_episode(seed)) for seed in (0, 1)]
    with torch.no_grad():
        singles = torch.stack([model.training_step(e, 0) for e in episodes])
        stacked = model.training_step(collate_episodes(episodes), 0)
    assert not torch.allclose(stacked, singles.mean())


def test_stacked_forward_shapes() -> None:
    model = trained_model().eval()
    batch = collate_episodes([_double(make_episode(seed)) for seed in (0, 1, 2)])
    with torch.no_grad():
        out = model.episode_forward(batch)
    images = 3 * WAYS * (SHOTS + QUERIES)
    assert out["feature_maps"].shape[0] == images and out["embeddings"].shape[0] == images
    assert out["support"].shape[:3] == (3, WAYS, SHOTS)
    assert out["scores"].shape == (3, WAYS * QUERIES, WAYS)


def test_eval_step_counts_every_episode_and_explains_every_query_against_its_own_episode() -> None:
    model = trained_model().eval()
    episodes = [_double(make_episode(seed)) for seed in (0, 1)]
    accuracy, nonfinite = EpisodeAccuracy(), NonFiniteCount()
    single_accuracy = EpisodeAccuracy()
    with torch.no_grad():
        stacked = model._eval_step(collate_episodes(episodes), accuracy, nonfinite, "val")
        singles = [model._eval_step(e, single_accuracy, NonFiniteCount(), "val") for e in episodes]
    assert int(accuracy.num_episodes) == 2
    result, expected = accuracy.compute(), single_accuracy.compute()
    torch.testing.assert_close(result["mean"], expected["mean"])
    torch.testing.assert_close(result["ci95"], expected["ci95"])
    torch.testing.assert_close(stacked["loss"], torch.stack([s["loss"] for s in singles]).mean())

    got = stacked["explain"]
    assert got.images.shape == (2 * WAYS * QUERIES, 3, SIZE, SIZE)
    for field in ("images", "feature_maps", "embeddings", "references", "correct", "boxes",
                  "reference_images", "labels", "predictions"):
        want = torch.cat([getattr(s["explain"], field) for s in singles])
        torch.testing.assert_close(getattr(got, field), want, msg=f"ExplanationInputs.{field}")
    # the references of a query of episode 1 are episode 1's supports, never episode 0's
    out = model.episode_forward(episodes[1])
    first = WAYS * QUERIES
    predicted = out["scores"].argmax(1)
    torch.testing.assert_close(got.references[first:], out["support"][predicted])
    torch.testing.assert_close(got.predictions[first:], episodes[1]["support_class"][predicted * SHOTS])


def test_explanation_inputs_of_a_stacked_batch_cover_all_queries() -> None:
    model = trained_model().eval()
    with torch.no_grad():
        inputs = model.explanation_inputs(collate_episodes([_double(make_episode(s)) for s in (0, 1, 2)]))
    assert inputs.references.shape[:2] == (3 * WAYS * QUERIES, SHOTS)
    assert inputs.labels.shape == inputs.correct.shape == (3 * WAYS * QUERIES,)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("episodes_per_batch_data")


@pytest.mark.parametrize("value", [0, -1])
def test_episodes_per_batch_below_one_is_rejected(value: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="episodes_per_batch must be >= 1"):
        FewShotDataModule(data_dir=str(tmp_path), episodes_per_batch=value, **TINY)


@pytest.mark.parametrize("loader", ["train_dataloader", "val_dataloader"])
def test_stacked_loaders_batch_the_same_episodes_in_the_same_order(data_dir: Path, loader: str) -> None:
    one = FewShotDataModule(data_dir=str(data_dir), **TINY)
    two = FewShotDataModule(data_dir=str(data_dir), episodes_per_batch=2, **TINY)
    for data in (one, two):
        data.setup("fit")
    singles = list(getattr(one, loader)())
    batches = list(getattr(two, loader)())
    assert len(batches) == (len(singles) + 1) // 2  # the last batch holds the odd episode
    assert batches[-1]["support"].shape[0] == 2 - len(singles) % 2
    for key in ("support_index", "query_index", "query_class", "support"):
        torch.testing.assert_close(torch.cat([b[key] for b in batches]), torch.stack([e[key] for e in singles]))


@pytest.mark.slow
def test_cli_fit_with_two_episodes_per_batch(tmp_path: Path, data_dir: Path) -> None:
    run_cli(
        ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), *TINY_DATA_ARGS,
         "--data.data_dir", str(data_dir), "--data.init_args.episodes_per_batch", "2", *SMALL_EPISODE_ARGS,
         "--data.train_episodes", "4", "--data.val_episodes", "1", "--trainer.max_epochs", "1"],
        cwd=tmp_path,
    )
    scalars, images = read_events(tmp_path / "logs" / "quickstart" / "version_0")
    assert [step for step, _ in scalars["train/loss"]] == [0, 1]  # 4 episodes, 2 per step: 2 steps
    assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars["train/loss"])
    assert 0.0 <= scalars["val/acc"][-1][1] <= 100.0
    assert "val/fam_energy_pointing_game" in scalars and images["val/fam_probe"]
