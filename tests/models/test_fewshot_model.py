"""FewShotClassifier: protocol, decision scores, FAM sum property, multi-task loss."""

from __future__ import annotations

import pytest
import torch

from fam_lightning.explainers import FAMExplainer
from fam_lightning.models import FewShotClassifier, UncertaintyWeighting
from fam_lightning.protocol import SimilarityModel
from fam_lightning.similarity import mean_similarity


def make_episode(ways: int = 3, shots: int = 2, queries: int = 4, size: int = 32, classes: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "support": torch.randn(ways * shots, 3, size, size, generator=g),
        "query": torch.randn(ways * queries, 3, size, size, generator=g),
        "support_target": torch.arange(ways).repeat_interleave(shots),
        "query_target": torch.arange(ways).repeat_interleave(queries),
        "support_class": torch.arange(ways).repeat_interleave(shots) % classes,
        "query_class": torch.arange(ways).repeat_interleave(queries) % classes,
        "support_box": torch.tensor([[4.0, 4.0, 20.0, 20.0]]).repeat(ways * shots, 1),
        "query_box": torch.tensor([[4.0, 4.0, 20.0, 20.0]]).repeat(ways * queries, 1),
        "ways": ways, "shots": shots, "queries": queries,
    }


def test_implements_protocol_and_scores_are_mean_similarity() -> None:
    model = FewShotClassifier(num_classes=5).eval()
    assert isinstance(model, SimilarityModel)
    batch = make_episode()
    with torch.no_grad():
        out = model.episode_forward(batch)
    queries = out["embeddings"][6:]
    for way in range(3):
        refs = out["support"][way].unsqueeze(0).expand(queries.shape[0], -1, -1)
        torch.testing.assert_close(out["scores"][:, way], mean_similarity(queries, refs))


@pytest.mark.parametrize("pooling", ["gap", "gmp", "lse"])
@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_fam_weights_sum_to_the_decision_score(pooling: str, similarity: str) -> None:
    model = FewShotClassifier(num_classes=5, pooling=pooling, similarity=similarity).double().eval()
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in make_episode().items()}
    with torch.no_grad():
        out = model.episode_forward(batch)
        inputs = model.explanation_inputs(batch)
        weights = FAMExplainer(model).weights(inputs.feature_maps, inputs.references)
    predicted = out["scores"].argmax(1)
    decision = out["scores"].gather(1, predicted.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(weights.sum(1), decision)
    maps = FAMExplainer(model)(batch["query"], inputs.references)
    assert maps.shape == (12, 32, 32) and torch.isfinite(maps).all()


def test_training_step_multitask_loss_and_gradients() -> None:
    model = FewShotClassifier(num_classes=5)
    loss = model.training_step(make_episode(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.loss_weighting.log_vars.grad is not None
    assert model.global_head.weight.grad.abs().sum() > 0
    assert model.logit_scale.grad is not None


def test_uncertainty_weighting_formula() -> None:
    weighting = UncertaintyWeighting(2)
    weighting.log_vars.data = torch.tensor([0.5, -1.0])
    losses = torch.tensor([2.0, 3.0])
    expected = torch.exp(torch.tensor(-0.5)) * 2 + 0.25 + torch.exp(torch.tensor(1.0)) * 3 - 0.5
    torch.testing.assert_close(weighting(losses), expected)


def test_missing_episode_keys_are_named() -> None:
    model = FewShotClassifier(num_classes=5)
    batch = make_episode()
    del batch["query"]
    with pytest.raises(KeyError, match="query"):
        model.episode_forward(batch)


def test_unknown_backbone_is_named() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'conv5'"):
        FewShotClassifier(backbone="conv5")
