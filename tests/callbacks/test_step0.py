"""The step-0 pass's isolation helpers: the model's own metrics, logging and modes come out untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics import MeanMetric

from fam_lightning.callbacks.step0 import eval_mode, muted_logging, swapped_metrics
from fam_lightning.models import FewShotClassifier


class _Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mean = MeanMetric()
        self.alias = self.mean  # one metric under two names
        self.group = nn.ModuleList([MeanMetric()])


def test_metrics_are_swapped_for_clones_and_the_originals_come_back_untouched() -> None:
    holder = _Holder()
    holder.mean.update(torch.tensor([1.0, 3.0]))
    original, listed = holder.mean, holder.group[0]
    with swapped_metrics(holder):
        assert holder.mean is not original and holder.alias is holder.mean  # one clone for both names
        assert holder.group[0] is not listed
        holder.mean.update(torch.tensor([100.0]))
        holder.group[0].update(torch.tensor([5.0]))
        assert holder.mean.compute().item() == pytest.approx((1 + 3 + 100) / 3)  # the clone holds the state
    assert holder.mean is original and holder.alias is original and holder.group[0] is listed
    assert original.update_count == 1 and original.compute().item() == 2.0
    assert not listed.update_called


def test_logging_is_muted_and_modes_restored() -> None:
    model = FewShotClassifier(num_classes=5)
    model.train()
    model.backbone.eval()  # a submodule in its own mode stays so
    with eval_mode(model), muted_logging(model):
        assert not model.training and not model.backbone.training
        assert model.log("val/x", 1.0) is None and model.log_dict({"val/y": 2.0}) is None  # no trainer: no error
    assert model.training and not model.backbone.training
    assert "log" not in model.__dict__ and "log_dict" not in model.__dict__
