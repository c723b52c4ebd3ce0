"""FAM on a user's own model: the SimilarityAdapter, and FAMCallback on a user's minimal LightningModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fam_lightning.callbacks import FAMCallback
from fam_lightning import ExplanationInputs, contribution_weights, pool
from fam_lightning.adapter import SimilarityAdapter
from fam_lightning.explainers import EXPLAINERS, FAMExplainer
from fam_lightning.protocol import check_similarity_model
from fam_lightning.similarity import mean_similarity
from tests.helpers.events import read_events


def embedding_net() -> nn.Sequential:
    """A user's plain embedding model: convs, global average pooling, a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 6),
    ).eval()


def test_adapter_turns_a_sequential_model_into_the_protocol() -> None:
    net = embedding_net()
    model = SimilarityAdapter(feature_extractor=net[:5], pooling="gap", projection=net[7], similarity="cosine")
    check_similarity_model(model)
    images, references = torch.randn(3, 3, 32, 32), torch.randn(3, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), net(images))  # the adapter decides as the model does
        reference_embeddings = net(references.flatten(0, 1)).view(3, 2, -1)
    maps = FAMExplainer(model)(images, reference_embeddings)
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    # FAM's channel weights through the user's head sum to the decision score (DESIGN.md, step 4)
    features = model.forward_features(images)
    weights = contribution_weights(pool(features, "gap"), reference_embeddings, "cosine", net[7])
    score = mean_similarity(model.embed(features), reference_embeddings, "cosine")
    torch.testing.assert_close(weights.sum(1), score - _bias_share(net[7], model.embed(features), reference_embeddings))


def _bias_share(head: nn.Linear, v: Tensor, refs: Tensor) -> Tensor:
    """The part of the cosine score that the head's bias contributes (it belongs to no channel)."""
    beta = (F.normalize(refs, dim=2) / v.norm(dim=1, keepdim=True).unsqueeze(1)).mean(1)
    return (beta * head.bias).sum(1)


def test_target_layer_hook_gives_the_same_maps_and_skips_the_rest() -> None:
    net = embedding_net()
    by_extractor = SimilarityAdapter(feature_extractor=net[:5], projection=net[7])
    by_layer = SimilarityAdapter(net, target_layer=net[4], projection=net[7])
    by_name = SimilarityAdapter(net, target_layer="4", projection=net[7])
    calls: list[int] = []
    handle = net[5].register_forward_hook(lambda *args: calls.append(1))
    images, references = torch.randn(2, 3, 32, 32), torch.randn(2, 4, 6)
    expected = FAMExplainer(by_extractor)(images, references)
    for model in (by_layer, by_name):
        torch.testing.assert_close(FAMExplainer(model)(images, references), expected)
    handle.remove()
    assert not calls  # the layers after the target layer never ran
    assert not net[4]._forward_hooks  # the capture hook is removed after every call


@pytest.mark.parametrize("name", ["fam", "gradcam", "scorecam", "grad_fam"])
def test_every_kind_of_explainer_runs_on_the_adapter(name: str) -> None:
    if name not in EXPLAINERS:
        pytest.fail(f"explainer {name!r} is not registered: {sorted(EXPLAINERS)}")
    net = embedding_net()
    model = SimilarityAdapter(net, target_layer="4", projection=net[7])
    maps = EXPLAINERS[name](model)(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 6))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_adapter_errors_name_the_problem() -> None:
    net = embedding_net()
    with pytest.raises(ValueError, match="exactly one of feature_extractor and target_layer"):
        SimilarityAdapter(net)
    with pytest.raises(ValueError, match="needs the model"):
        SimilarityAdapter(target_layer=net[4])
    with pytest.raises(ValueError, match="'layer9' is not a submodule of Sequential"):
        SimilarityAdapter(net, target_layer="layer9")
    with pytest.raises(ValueError, match="not a submodule"):
        SimilarityAdapter(net, target_layer=nn.ReLU())
    with pytest.raises(ValueError, match="pooling must be one of"):
        SimilarityAdapter(feature_extractor=net[:5], pooling="avg")  # type: ignore[arg-type]
    flat = SimilarityAdapter(net, target_layer="6")  # Flatten: (B, 16) is no feature map
    with pytest.raises(ValueError, match=r"must be \(B, C, h, w\), got \(2, 16\)"):
        flat.forward_features(torch.randn(2, 3, 32, 32))


# -- FAMCallback on a user's own LightningModule -------------------------------------------------


class BoxedSquares(Dataset):
    """Two classes: a bright square in the left or the right half of a noisy image; its box."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, 32, 32, generator=generator) * 0.3
        self.labels = torch.arange(count) % 2
        self.boxes = torch.zeros(count, 4)
        for i, label in enumerate(self.labels.tolist()):
            x0, y0 = 2 + 16 * label, int(torch.randint(2, 20, (1,), generator=generator))
            self.images[i, :, y0:y0 + 10, x0:x0 + 10] += 2.0
            self.boxes[i] = torch.tensor([x0, y0, x0 + 10, y0 + 10])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "boxes": self.boxes[i]}


class PrototypeClassifier(L.LightningModule):
    """A user's minimal similarity classifier: cosine to one learned prototype per class."""

    pooling, similarity = "gap", "cosine"

    def __init__(self) -> None:
        super().__init__()
        self.features = embedding_net()[:5].train()
        self.projection = None
        self.prototypes = nn.Parameter(torch.randn(2, 16))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def embed(self, feature_maps: Tensor) -> Tensor:
        return feature_maps.mean((2, 3))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        embeddings = self.embed(self.forward_features(batch["image"]))
        logits = 10 * F.normalize(embeddings, dim=1) @ F.normalize(self.prototypes, dim=1).t()
        return F.cross_entropy(logits, batch["label"])

    def explanation_inputs(self, batch: dict[str, Tensor]) -> ExplanationInputs:
        feature_maps = self.forward_features(batch["image"])
        embeddings = self.embed(feature_maps)
        predictions = (F.normalize(embeddings, dim=1) @ F.normalize(self.prototypes, dim=1).t()).argmax(1)
        return ExplanationInputs(
            images=batch["image"], feature_maps=feature_maps, embeddings=embeddings,
            references=self.prototypes[predictions].unsqueeze(1),  # (B, 1, D): what it was compared with
            correct=predictions == batch["label"], boxes=batch["boxes"],
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        return {"explain": self.explanation_inputs(batch)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_fam_callback_explains_a_users_own_lightning_module(tmp_path: Path) -> None:
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="mine", version=0),
        callbacks=[FAMCallback(num_probe_images=4)], enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )
    trainer.fit(
        PrototypeClassifier(),
        DataLoader(BoxedSquares(32, seed=0), batch_size=8, shuffle=True),
        DataLoader(BoxedSquares(16, seed=1), batch_size=8),
    )
    scalars, images = read_events(tmp_path / "mine" / "version_0")
    assert images["val/fam_probe"], "no probe grid logged"
    for tag in ("val/fam_energy_pointing_game", "val/fam_iou", "val/fam_average_drop",
                "val/fam_energy_uniform_baseline"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
        value = scalars[tag][-1][1]
        assert torch.isfinite(torch.tensor(value)), tag
    assert 0.0 <= scalars["val/fam_energy_pointing_game"][-1][1] <= 100.0
