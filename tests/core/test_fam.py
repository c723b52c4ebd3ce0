"""Known-answer tests for the FAM arithmetic (fam_lightning/fam.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fam_lightning.fam import contribution_weights, embed, feature_activation_map, pool
from fam_lightning.similarity import mean_similarity

torch.set_default_dtype(torch.float32)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pool_known_values() -> None:
    a = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])  # (1, 1, 2, 2)
    assert pool(a, "gap").item() == pytest.approx(2.0)
    assert pool(a, "gmp").item() == pytest.approx(5.0)
    r = 2.0
    expected = math.log((math.exp(0) + math.exp(2) + math.exp(4) + math.exp(10)) / 4) / r
    assert pool(a, "lse", r=r).item() == pytest.approx(expected, rel=1e-6)


def test_lse_lies_between_gap_and_gmp_and_tends_to_both() -> None:
    a = torch.rand(3, 4, 5, 5, generator=_gen())
    gap, gmp = pool(a, "gap"), pool(a, "gmp")
    lse = pool(a, "lse", r=10.0)
    assert torch.all(lse >= gap - 1e-6) and torch.all(lse <= gmp + 1e-6)
    torch.testing.assert_close(pool(a.double(), "lse", r=1e-6), gap.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(pool(a.double(), "lse", r=1e5), gmp.double(), atol=1e-3, rtol=0)


def test_pool_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="feature_maps must be"):
        pool(torch.rand(3, 4))
    with pytest.raises(ValueError, match="pooling method"):
        pool(torch.rand(1, 2, 3, 3), "avg")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_weights_sum_to_mean_similarity(dtype: torch.dtype) -> None:
    u = torch.rand(6, 16, generator=_gen(1), dtype=dtype)
    refs = torch.rand(6, 3, 16, generator=_gen(2), dtype=dtype)
    w = contribution_weights(u, refs, "cosine")
    assert w.shape == (6, 16) and w.dtype == dtype
    expected = F.cosine_similarity(u.unsqueeze(1), refs, dim=2).mean(1)
    torch.testing.assert_close(w.sum(1), expected)
    # eq. 15 per channel: c_k = mean_n u_k s_nk / (|u| |s_n|)
    manual = (u.unsqueeze(1) * refs / (u.norm(dim=1)[:, None, None] * refs.norm(dim=2, keepdim=True))).mean(1)
    torch.testing.assert_close(w, manual)


def test_single_reference_2d_equals_3d() -> None:
    u, s = torch.rand(4, 8, generator=_gen(3)), torch.rand(4, 8, generator=_gen(4))
    torch.testing.assert_close(contribution_weights(u, s), contribution_weights(u, s.unsqueeze(1)))


def test_projection_eq18_matches_projected_space() -> None:
    """w_k = u_k (W^T beta)_k sums to the similarity computed in the projected space."""
    u = torch.rand(5, 12, generator=_gen(5), dtype=torch.float64)
    weight = torch.randn(7, 12, generator=_gen(6), dtype=torch.float64)
    refs = torch.randn(5, 4, 7, generator=_gen(7), dtype=torch.float64)
    w = contribution_weights(u, refs, "cosine", projection=weight)
    v = embed(u, weight)
    c = contribution_weights(v, refs, "cosine")  # FAM in the projected (decision) space
    torch.testing.assert_close(w.sum(1), c.sum(1))
    torch.testing.assert_close(w.sum(1), mean_similarity(v, refs, "cosine"))
    # the explicit formula
    beta = (refs / refs.norm(dim=2, keepdim=True)).mean(1) / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(w, u * (beta @ weight))


def test_identity_projection_equals_no_projection() -> None:
    u, refs = torch.rand(3, 6, generator=_gen(8)), torch.rand(3, 2, 6, generator=_gen(9))
    torch.testing.assert_close(
        contribution_weights(u, refs, projection=torch.eye(6)), contribution_weights(u, refs)
    )


def test_linear_module_uses_weight_and_bias_share_is_missing() -> None:
    torch.manual_seed(0)
    head = nn.Linear(10, 6).double()
    u = torch.rand(4, 10, dtype=torch.float64)
    refs = torch.randn(4, 3, 6, dtype=torch.float64)
    w = contribution_weights(u, refs, "cosine", projection=head)
    v = head(u)
    beta = (refs / refs.norm(dim=2, keepdim=True)).mean(1) / v.norm(dim=1, keepdim=True)
    total = mean_similarity(v, refs, "cosine")
    torch.testing.assert_close(w.sum(1), total - (beta * head.bias).sum(1))
    nobias = nn.Linear(10, 6, bias=False).double()
    nobias.weight.data.copy_(head.weight.data)
    torch.testing.assert_close(
        contribution_weights(u, refs, projection=nobias),
        contribution_weights(u, refs, projection=head.weight.detach()),
    )


def test_nonlinear_head_linearised_keeps_sum_for_bias_free_relu() -> None:
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(10, 16, bias=False), nn.ReLU(), nn.Linear(16, 6, bias=False)).double()
    u = torch.rand(5, 10, dtype=torch.float64)
    refs = torch.randn(5, 4, 6, dtype=torch.float64)
    w = contribution_weights(u, refs, "cosine", projection=head)
    torch.testing.assert_close(w.sum(1), mean_similarity(head(u), refs, "cosine"))
    # a linear head wrapped as a generic module: autograd path equals eq. 18
    linear = nn.Sequential(nn.Linear(10, 6, bias=False)).double()
    torch.testing.assert_close(
        contribution_weights(u, refs, projection=linear),
        contribution_weights(u, refs, projection=linear[0].weight.detach()),
    )


def test_reference_weights_give_weighted_mean() -> None:
    u = torch.rand(3, 8, generator=_gen(10), dtype=torch.float64)
    refs = torch.rand(3, 5, 8, generator=_gen(11), dtype=torch.float64)
    votes = torch.rand(3, 5, generator=_gen(12), dtype=torch.float64)
    w = contribution_weights(u, refs, reference_weights=votes)
    cos = F.cosine_similarity(u.unsqueeze(1), refs, dim=2)
    torch.testing.assert_close(w.sum(1), (cos * votes).sum(1) / votes.sum(1))
    # uniform weights equal no weights
    torch.testing.assert_close(
        contribution_weights(u, refs, reference_weights=torch.ones(3, 5, dtype=torch.float64)),
        contribution_weights(u, refs),
    )


def test_dot_and_euclidean_decompose_exactly() -> None:
    u = torch.randn(4, 9, generator=_gen(13), dtype=torch.float64)
    refs = torch.randn(4, 3, 9, generator=_gen(14), dtype=torch.float64)
    torch.testing.assert_close(contribution_weights(u, refs, "dot").sum(1), mean_similarity(u, refs, "dot"))
    torch.testing.assert_close(
        contribution_weights(u, refs, "euclidean").sum(1), mean_similarity(u, refs, "euclidean")
    )


def test_euclidean_with_head_is_gradient_times_input() -> None:
    torch.manual_seed(2)
    weight = torch.randn(5, 7, dtype=torch.float64)
    u = torch.rand(3, 7, dtype=torch.float64, requires_grad=True)
    refs = torch.randn(3, 2, 5, dtype=torch.float64)
    score = mean_similarity(u @ weight.t(), refs, "euclidean").sum()
    (grad,) = torch.autograd.grad(score, u)
    w = contribution_weights(u.detach(), refs, "euclidean", projection=weight)
    torch.testing.assert_close(w, u.detach() * grad)


def test_contribution_weights_shape_errors_name_the_argument() -> None:
    u = torch.rand(4, 8)
    with pytest.raises(ValueError, match="query_features"):
        contribution_weights(torch.rand(4, 8, 1), torch.rand(4, 8))
    with pytest.raises(ValueError, match="references"):
        contribution_weights(u, torch.rand(3, 8))
    with pytest.raises(ValueError, match="D=5"):
        contribution_weights(u, torch.rand(4, 5))
    with pytest.raises(ValueError, match="reference_weights"):
        contribution_weights(u, torch.rand(4, 2, 8), reference_weights=torch.rand(4, 3))
    with pytest.raises(ValueError, match="projection"):
        contribution_weights(u, torch.rand(4, 5), projection=torch.rand(5, 9))
    with pytest.raises(ValueError, match="similarity"):
        contribution_weights(u, torch.rand(4, 8), "l1")


def test_feature_activation_map_known_answer() -> None:
    a = torch.zeros(1, 3, 2, 2)
    a[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    a[0, 1] = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    a[0, 2] = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    weights = torch.tensor([[0.1, -0.3, 0.5]])  # alpha = minmax = (0.5, 0, 1)
    m = feature_activation_map(a, weights)
    # sum alpha_k A_k = [[0.5, 2], [0, 0]] -> min-max -> [[0.25, 1], [0, 0]]
    torch.testing.assert_close(m, torch.tensor([[[0.25, 1.0], [0.0, 0.0]]]))


def test_feature_activation_map_upsamples_in_unit_range() -> None:
    a = torch.rand(4, 8, 5, 5, generator=_gen(15))
    w = torch.randn(4, 8, generator=_gen(16))
    m = feature_activation_map(a, w, size=(84, 84))
    assert m.shape == (4, 84, 84)
    assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    torch.testing.assert_close(m.amax(dim=(1, 2)), torch.ones(4))
    torch.testing.assert_close(m.amin(dim=(1, 2)), torch.zeros(4))


def test_constant_map_and_constant_weights_give_zeros() -> None:
    ones = torch.ones(2, 3, 4, 4)
    assert torch.equal(feature_activation_map(ones, torch.randn(2, 3), size=(8, 8)), torch.zeros(2, 8, 8))
    a = torch.rand(2, 3, 4, 4)
    assert torch.equal(feature_activation_map(a, torch.full((2, 3), 0.7)), torch.zeros(2, 4, 4))
    negative = -torch.rand(1, 3, 4, 4)  # ReLU removes everything
    out = feature_activation_map(negative, torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.equal(out, torch.zeros(1, 4, 4))


def test_feature_activation_map_shape_errors() -> None:
    with pytest.raises(ValueError, match="feature_maps"):
        feature_activation_map(torch.rand(3, 4, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="weights must be"):
        feature_activation_map(torch.rand(2, 3, 4, 4), torch.rand(2, 4))


def test_dtype_and_device_are_preserved() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            a = torch.rand(2, 6, 3, 3, device=device, dtype=dtype)
            refs = torch.rand(2, 2, 6, device=device, dtype=dtype)
            w = contribution_weights(pool(a), refs)
            m = feature_activation_map(a, w, size=(7, 7))
            assert m.device.type == device and m.dtype == dtype and w.dtype == dtype


def test_nonlinear_head_works_inside_inference_mode() -> None:
    torch.manual_seed(3)
    head = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 6))
    u, refs = torch.rand(4, 10), torch.randn(4, 3, 6)
    expected = contribution_weights(u, refs, projection=head)
    with torch.inference_mode():
        got = contribution_weights(u.clone(), refs.clone(), projection=head)
    torch.testing.assert_close(got, expected)
    assert all(p.grad is None for p in head.parameters())
