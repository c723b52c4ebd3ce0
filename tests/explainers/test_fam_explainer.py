"""FAMExplainer on a protocol model: maps, mixed precision, protocol errors."""

from __future__ import annotations

import pytest
import torch

from fam_lightning.explainers import FAMExplainer
from fam_lightning.models import FewShotClassifier


def test_maps_under_bf16_autocast_match_float32() -> None:
    model = FewShotClassifier(num_classes=3).eval()
    images = torch.randn(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        refs = model(images[:2]).unsqueeze(0).expand(4, -1, -1)
        exact = FAMExplainer(model)(images, refs)
        features = model.forward_features(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = FAMExplainer(model).from_feature_maps(features.bfloat16(), refs.bfloat16(), size=(40, 40))
    assert mixed.dtype == torch.float32
    assert (mixed - exact).abs().max() < 0.05  # only the bf16 rounding of the inputs differs


def test_object_without_protocol_is_rejected_by_name() -> None:
    with pytest.raises(TypeError, match="forward_features"):
        FAMExplainer(torch.nn.Linear(2, 2))


def test_images_must_be_4d() -> None:
    model = FewShotClassifier(num_classes=3).eval()
    with pytest.raises(ValueError, match="images must be"):
        FAMExplainer(model)(torch.rand(3, 40, 40), torch.rand(3, 64))
