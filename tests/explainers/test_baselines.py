"""Explainer suite: agreement with pytorch-grad-cam, known answers per method, shared properties.

pytorch-grad-cam returns numpy maps resized by cv2 (INTER_LINEAR, which is
torch's bilinear with align_corners=False) after ``(x - min) / (max + 1e-7)``;
ours are min-maxed at feature resolution, upsampled the same way and min-maxed
again. Min-max is affine and resizing linear, so both agree up to their
epsilons: compared with atol 1e-4 at image resolution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning import fam
from fam_lightning.explainers import (
    CFCAM,
    EXPLAINERS,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GradFAM,
    ScoreCAM,
    ScoreFAM,
    XGradCAM,
)
from fam_lightning.explainers.base import normalize_saliency
from fam_lightning.explainers.cfcam import dbscan, masked_quantile
from fam_lightning.explainers.eigencam import first_component_projection
from fam_lightning.models import FewShotClassifier
from fam_lightning.similarity import mean_similarity

SIZE = 32  # Conv4: 2 x 2 feature maps


class TinyModel(nn.Module):
    """A protocol model small enough for loops: one strided conv, GAP, optional linear head."""

    def __init__(self, channels: int = 4, dim: int | None = None, similarity: str = "dot") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.pooling = "gap"
        self.similarity = similarity
        self.projection = nn.Linear(channels, dim, bias=False) if dim else None

    def forward_features(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.conv(x), 0.1)

    def embed(self, feature_maps: Tensor) -> Tensor:
        return fam.embed(fam.pool(feature_maps, "gap"), self.projection)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def conv4() -> tuple[FewShotClassifier, Tensor, Tensor]:
    """A Conv4 few-shot model, 3 images, and shared references (3, 2, D)."""
    torch.manual_seed(0)
    model = FewShotClassifier(num_classes=3).eval()
    images = torch.randn(3, 3, SIZE, SIZE, generator=seeded())
    with torch.no_grad():
        support = model(torch.randn(2, 3, SIZE, SIZE, generator=seeded(1)))
    return model, images, support.unsqueeze(0).expand(3, -1, -1)


class SimilarityScore(nn.Module):
    """pytorch-grad-cam's view of the model: (B, 3, H, W) -> (B, 1) decision score to fixed references."""

    def __init__(self, model: FewShotClassifier, references: Tensor) -> None:
        super().__init__()
        self.model = model
        self.references = references  # (N, D)

    def forward(self, x: Tensor) -> Tensor:
        refs = self.references.unsqueeze(0).expand(x.shape[0], -1, -1)
        return mean_similarity(self.model(x), refs, self.model.similarity).unsqueeze(1)


# -- acceptance: agreement with pytorch-grad-cam -------------------------------------------------
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(GradCAM, "GradCAM"), (GradCAMPlusPlus, "GradCAMPlusPlus"), (XGradCAM, "XGradCAM"), (ScoreCAM, "ScoreCAM")],
)
def test_agrees_with_pytorch_grad_cam_on_the_similarity_target(conv4, ours, theirs) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images, refs = conv4
    reference_model = FewShotClassifier(num_classes=3).eval()
    reference_model.load_state_dict(model.state_dict())  # their backward fills .grad: keep ours clean
    wrapped = SimilarityScore(reference_model, refs[0])
    cam = getattr(pytorch_grad_cam, theirs)(wrapped, target_layers=[reference_model.backbone.features[-1]])
    expected = cam(images, targets=[ClassifierOutputTarget(0)] * images.shape[0])

    # ScoreCAM: their masks come from UpsamplingBilinear2d (align_corners=True)
    explainer = ours(model, align_corners=True) if ours is ScoreCAM else ours(model)
    maps = explainer(images, refs)
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-4)


# -- known answers ---------------------------------------------------------------------------------
def test_gradcam_weights_are_the_spatial_mean_gradient_of_a_linear_model() -> None:
    """S = r . W mean(A): dS/dA_kij = (W^T r)_k / hw, so Grad-CAM's weights are W^T r / hw."""
    model = TinyModel(channels=4, dim=3).double()
    features = torch.rand(2, 4, 3, 5, generator=seeded(), dtype=torch.float64)
    refs = torch.randn(2, 3, generator=seeded(1), dtype=torch.float64)
    explainer = GradCAM(model)
    activations, grads = explainer.gradients(features, refs)
    expected = refs @ model.projection.weight / 15.0  # (B, C)
    torch.testing.assert_close(explainer.cam_weights(activations, grads), expected)
    saliency = torch.einsum("bc,bchw->bhw", expected, features)
    maps = explainer.from_feature_maps(features, refs, size=(6, 10))
    torch.testing.assert_close(maps, normalize_saliency(saliency, (6, 10)))


def test_gradcampp_and_xgradcam_formulas_against_loops() -> None:
    g = torch.Generator().manual_seed(3)
    activations = torch.rand(2, 3, 2, 2, generator=g, dtype=torch.float64)
    grads = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    grads[0, 1, 0, 0] = 0.0  # alpha is 0 where the gradient is
    model = TinyModel()
    plus = GradCAMPlusPlus(model).cam_weights(activations, grads)
    x = XGradCAM(model).cam_weights(activations, grads)
    for b in range(2):
        for k in range(3):
            total = float(activations[b, k].sum())
            w_plus = w_x = 0.0
            for i in range(2):
                for j in range(2):
                    gij, aij = float(grads[b, k, i, j]), float(activations[b, k, i, j])
                    alpha = 0.0 if gij == 0 else gij**2 / (2 * gij**2 + total * gij**3 + 1e-6)
                    w_plus += alpha * max(gij, 0.0)
                    w_x += aij * gij / (total + 1e-7)
            assert plus[b, k].item() == pytest.approx(w_plus, rel=1e-12)
            assert x[b, k].item() == pytest.approx(w_x, rel=1e-12)


@pytest.mark.parametrize("shape", [(3, 6, 4, 5), (3, 12, 2, 3)])  # Gram of the channels / of the positions
def test_eigencam_is_the_first_principal_component_projection_with_fixed_sign(shape) -> None:
    features = torch.rand(*shape, generator=seeded(), dtype=torch.float64)
    projection = first_component_projection(features)
    for b in range(3):
        x = features[b].reshape(shape[1], -1).T.numpy()
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x)
        axis = vt[0] if vt[0].sum() >= 0 else -vt[0]
        np.testing.assert_allclose(projection[b].reshape(-1).numpy(), x @ axis, atol=1e-10)
        # the sign rule: the map correlates positively with the channel-mean activation
        mean_map = features[b].mean(0).reshape(-1)
        assert torch.dot(projection[b].reshape(-1), mean_map - mean_map.mean()) > 0
    maps = EigenCAM(TinyModel()).from_feature_maps(features, None, size=(8, 10))
    torch.testing.assert_close(maps, normalize_saliency(projection, (8, 10)))


def _score_cam_by_loop(model: TinyModel, images: Tensor, score) -> Tensor:
    """Score-CAM from its definition, one channel at a time."""
    with torch.no_grad():
        features = model.forward_features(images)
        out = []
        for b in range(images.shape[0]):
            scores = []
            for k in range(features.shape[1]):
                mask = F.interpolate(features[b, k][None, None], size=images.shape[-2:], mode="bilinear")[0, 0]
                low, high = mask.min(), mask.max()
                mask = (mask - low) / (high - low) if high > low else torch.zeros_like(mask)
                embedding = model.embed(model.forward_features((images[b] * mask)[None]))[0]
                scores.append(score(b, embedding))
            weights = torch.softmax(torch.stack(scores), dim=0)
            out.append((weights[:, None, None] * features[b]).sum(0))
    return normalize_saliency(torch.stack(out), tuple(images.shape[-2:]))


def test_scorecam_equals_its_definition_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = TinyModel(channels=5, dim=3, similarity="cosine").double()
    images = torch.randn(2, 3, 8, 8, generator=seeded(), dtype=torch.float64)
    refs = torch.randn(2, 4, 3, generator=seeded(1), dtype=torch.float64)
    weights = torch.rand(2, 4, generator=seeded(2), dtype=torch.float64)
    expected = _score_cam_by_loop(
        model, images, lambda b, z: mean_similarity(z[None], refs[b][None], "cosine", weights[b][None])[0]
    )
    maps = ScoreCAM(model, batch_size=3)(images, refs, weights)  # chunks straddle samples
    torch.testing.assert_close(maps, expected)


def test_score_fam_equals_its_definition_on_a_tiny_model() -> None:
    """Paper 001 (as documented in score_fam.py): channel score = cos(z(X * H_k), z(X))."""
    torch.manual_seed(0)
    model = TinyModel(channels=5, dim=3).double()
    images = torch.randn(2, 3, 8, 8, generator=seeded(), dtype=torch.float64)
    with torch.no_grad():
        own = model.embed(model.forward_features(images))
    expected = _score_cam_by_loop(model, images, lambda b, z: F.cosine_similarity(z, own[b], dim=0))
    torch.testing.assert_close(ScoreFAM(model, batch_size=4)(images), expected)


def test_ablationcam_weights_are_score_drops_by_loop() -> None:
    torch.manual_seed(0)
    model = TinyModel(channels=4, dim=3, similarity="cosine").double()
    features = torch.randn(2, 4, 3, 3, generator=seeded(), dtype=torch.float64)
    refs = torch.randn(2, 2, 3, generator=seeded(1), dtype=torch.float64)
    expected = torch.empty(2, 4, dtype=torch.float64)
    for b in range(2):
        base = mean_similarity(model.embed(features[b : b + 1]), refs[b : b + 1], "cosine")
        for k in range(4):
            ablated = features[b : b + 1].clone()
            ablated[0, k] = 0
            expected[b, k] = base - mean_similarity(model.embed(ablated), refs[b : b + 1], "cosine")
    explainer = AblationCAM(model, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(explainer.score_drops(features, refs), expected)
    saliency = torch.einsum("bc,bchw->bhw", expected, features)
    maps = explainer.from_feature_maps(features, refs, size=(6, 6))
    torch.testing.assert_close(maps, normalize_saliency(saliency, (6, 6)))


def test_grad_fam_is_gradcam_of_the_dot_self_similarity() -> None:
    """d(||z||^2 / 2)/dA = z . dz/dA = Grad-CAM of z . sg(z): the embedding as its own reference."""
    model = FewShotClassifier(num_classes=3, similarity="dot").eval()
    images = torch.randn(3, 3, SIZE, SIZE, generator=seeded())
    with torch.no_grad():
        own = model(images)
    torch.testing.assert_close(GradFAM(model)(images), GradCAM(model)(images, own))
    # a linear head: dT/dA_kij = (W^T z)_k / hw with z = W mean(A)
    tiny = TinyModel(channels=4, dim=3).double()
    features = torch.rand(2, 4, 2, 3, generator=seeded(), dtype=torch.float64)
    explainer = GradFAM(tiny)
    activations, grads = explainer.gradients(features, None)
    z = features.mean((2, 3)) @ tiny.projection.weight.T
    torch.testing.assert_close(explainer.cam_weights(activations, grads), z @ tiny.projection.weight / 6.0)


# -- CF-CAM ----------------------------------------------------------------------------------------
def _clustered_points(seed: int, count: int = 40, dim: int = 16) -> Tensor:
    """Channels as noisy copies of 3 prototypes at different scales, plus outliers."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    prototypes = torch.rand(3, dim, generator=g, dtype=torch.float64) * scales
    which = torch.randint(0, 3, (count,), generator=g)
    points = prototypes[which] + 0.05 * torch.randn(count, dim, generator=g, dtype=torch.float64)
    points[:4] = 3 * torch.rand(4, dim, generator=g, dtype=torch.float64)  # likely noise
    return points


def test_dbscan_matches_scikit_learn() -> None:
    from sklearn.cluster import DBSCAN

    for seed in range(4):
        points = _clustered_points(seed).unsqueeze(0)
        candidate = torch.rand(1, 40, generator=seeded(seed)) > 0.2
        distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
        for eps in (0.15, 0.3, 0.6):
            labels = dbscan(distances, candidate, torch.tensor([eps], dtype=torch.float64), torch.tensor([3]))[0]
            index = candidate[0].nonzero().squeeze(1)
            expected = DBSCAN(eps=eps, min_samples=3).fit(points[0, index].numpy()).labels_
            ours = labels[index].numpy()
            assert ((ours == -1) == (expected == -1)).all()
            # the same partition (labels may be named differently)
            same_ours = ours[:, None] == ours[None, :]
            same_expected = expected[:, None] == expected[None, :]
            clustered = expected != -1
            assert (same_ours == same_expected)[np.ix_(clustered, clustered)].all()
            assert (labels[~candidate[0]] == -1).all()


def test_masked_quantile_matches_numpy_percentile() -> None:
    values = torch.rand(3, 7, 7, generator=seeded(), dtype=torch.float64)
    mask = torch.rand(3, 7, 7, generator=seeded(1)) > 0.4
    ours = masked_quantile(values, mask, 0.25)
    for b in range(3):
        assert ours[b].item() == pytest.approx(np.percentile(values[b][mask[b]].numpy(), 25), rel=1e-12)


def _cfcam_weights_reference(activations: Tensor, gradients: Tensor) -> Tensor:
    """The CF-CAM authors' procedure (cfcam.py of jerryp-hfut/CF-CAM), per sample with numpy + scikit-learn."""
    from sklearn.cluster import DBSCAN

    out = []
    for a, g in zip(activations, gradients):
        channels, height, width = a.shape
        matrix = a.reshape(channels, -1).numpy()
        norms = np.linalg.norm(matrix, axis=1)
        important = np.where(norms >= np.percentile(norms, 75))[0]
        rest = np.where(norms < np.percentile(norms, 75))[0]
        distances = np.linalg.norm(matrix[rest][:, None] - matrix[rest][None, :], axis=2)
        np.fill_diagonal(distances, np.inf)
        eps = max(np.percentile(distances[distances != np.inf], 25), 1e-5)
        labels = DBSCAN(eps=eps, min_samples=max(2, int(len(rest) * 0.05))).fit(matrix[rest]).labels_
        weights = torch.full((channels,), float("-inf"), dtype=g.dtype)
        for k in important:
            weights[k] = g[k].mean()
        for cluster in set(labels) - {-1}:
            members = rest[labels == cluster]
            mean = g[members].mean(0)
            ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            spatial = torch.exp(-((ys - height / 2) ** 2 + (xs - width / 2) ** 2) / (2 * 5.0**2))
            kernel = spatial * torch.exp(-((mean - mean.mean()) ** 2) / (2 * 0.1**2))
            kernel = kernel / (kernel.sum() + 1e-6)
            filtered = F.conv2d(mean[None, None], kernel[None, None].to(mean.dtype), padding="same")[0, 0]
            weights[members] = filtered.mean()
        out.append(torch.softmax(weights, dim=0))
    return torch.stack(out)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # the authors' own padding
def test_cfcam_weights_follow_the_authors_procedure() -> None:
    g = seeded(5)
    activations = torch.stack([_clustered_points(s, count=40, dim=16).view(40, 4, 4) for s in (1, 2)])
    gradients = 0.3 * torch.randn(2, 40, 4, 4, generator=g, dtype=torch.float64)
    explainer = CFCAM(TinyModel())
    important, labels = explainer.channel_clusters(activations)
    assert important.any() and (labels >= 0).any() and (labels == -1).any()  # all three kinds occur
    assert len(set(labels[~important].tolist()) - {-1}) >= 2  # several clusters
    expected = _cfcam_weights_reference(activations, gradients)
    torch.testing.assert_close(explainer.cam_weights(activations, gradients), expected)


# -- properties shared by every explainer ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_maps_in_unit_range_without_parameter_grads_inside_inference_mode(conv4, name: str) -> None:
    model, images, refs = conv4
    model.zero_grad(set_to_none=True)
    explainer = EXPLAINERS[name](model)
    with torch.inference_mode():
        maps = explainer(images, refs)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.amax(dim=(1, 2)).eq(1).all()  # min-max normalised per sample
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        features = model.forward_features(images)
    torch.testing.assert_close(explainer(images, refs, feature_maps=features), maps)
    passes = explainer.forward_passes_per_image(64)
    assert passes.backbone >= 1 and str(passes)


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_references_are_needed_exactly_when_declared(conv4, name: str) -> None:
    model, images, _ = conv4
    explainer = EXPLAINERS[name](model)
    if explainer.needs_references:
        with pytest.raises(ValueError, match="needs references"):
            explainer(images)
    else:
        assert explainer(images).shape == (3, SIZE, SIZE)


def test_input_perturbing_explainers_name_the_call_to_use(conv4) -> None:
    model, images, refs = conv4
    with torch.no_grad():
        features = model.forward_features(images)
    with pytest.raises(TypeError, match="feature_maps="):
        ScoreCAM(model).from_feature_maps(features, refs)


def test_gradient_explainers_work_on_features_with_a_graph_in_training_mode() -> None:
    model = FewShotClassifier(num_classes=3).train()
    images = torch.randn(2, 3, SIZE, SIZE, generator=seeded())
    features = model.forward_features(images)  # part of a training graph
    refs = model.embed(features).detach()
    maps = GradCAM(model).from_feature_maps(features, refs, size=(SIZE, SIZE))
    assert model.training and torch.isfinite(maps).all()
    assert all(p.grad is None for p in model.parameters())
