"""Spearman rank correlation per sample (the sanity check's statistic) against scipy.stats.spearmanr."""

from __future__ import annotations

import pytest
import torch

from fam_lightning.metrics import average_ranks, spearman


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (3, 30), generator=g).float()  # many ties
    b = a + torch.randint(0, 3, (3, 30), generator=g).float()
    ours = spearman(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=1e-12)
    assert spearman(torch.zeros(1, 5), torch.rand(1, 5)).isnan().all()  # constant map


def test_maps_are_compared_flattened_and_ranks_average_ties() -> None:
    from scipy.stats import rankdata, spearmanr

    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 6, 7, generator=g), torch.rand(2, 6, 7, generator=g)
    for i in range(2):
        assert spearman(a, b)[i].item() == pytest.approx(
            spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic, abs=1e-12)
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    assert average_ranks(values).tolist() == [(rankdata(values[0].numpy()) - 1).tolist()]
    with pytest.raises(ValueError, match="one shape"):
        spearman(torch.rand(2, 4), torch.rand(2, 5))
