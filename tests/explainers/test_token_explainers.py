"""Explainers on transformer token grids: every explainer, rollout / gradient rollout vs brute force,
Grad-CAM vs pytorch-grad-cam with its reshape_transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fam_lightning.adapter import SimilarityAdapter
from fam_lightning.backbones import create_backbone
from fam_lightning.backbones.tokens import tokens_to_grid
from fam_lightning.explainers import (
    EXPLAINERS,
    TOKEN_EXPLAINERS,
    AttentionRollout,
    GradCAM,
    GradientRollout,
    explainers_for,
)
from fam_lightning.explainers._attention import readout
from fam_lightning.explainers.base import normalize_saliency
from fam_lightning.explainers.rollout import rollout
from fam_lightning.fam import pool
from fam_lightning.similarity import mean_similarity

VIT = dict(img_size=48, patch_size=8, depth=2, embed_dim=32, num_heads=2)
TOKEN_MODELS = {
    "vit": "vit_tiny_patch16_224",
    "deit_distilled": "deit_tiny_distilled_patch16_224",
    "reg_gap": "vit_wee_patch16_reg1_gap_256",
}
SIZE = (48, 64)  # non-square: a 6 x 8 token grid


def _adapter(key: str, seed: int = 0) -> SimilarityAdapter:
    torch.manual_seed(seed)
    backbone = create_backbone(f"timm:{TOKEN_MODELS[key]}", **VIT)
    with torch.no_grad():  # timm's init (std 0.02) leaves the attention uniform: sharpen it
        for name, module in backbone.named_modules():
            if name.endswith("qkv"):
                module.weight.normal_(0.0, 1.5 / module.in_features**0.5)
            if hasattr(module, "gamma"):  # LayerScale (vit_wee: init 1e-5) would hide the attention's effect
                module.gamma.fill_(1.0)
    return SimilarityAdapter(feature_extractor=backbone, pooling="gap", similarity="cosine").eval()


def _inputs(model: SimilarityAdapter, batch: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, *SIZE, generator=g)
    with torch.no_grad():
        refs = model(torch.randn(batch * 3, 3, *SIZE, generator=g)).view(batch, 3, -1)
    return images, refs


def _manual_forward(vit: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """timm's ViT forward_features written out, each block's softmax attention kept (in the graph)."""
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    attentions = []
    for block in vit.blocks:
        attn = block.attn
        h = block.norm1(tokens)
        batch, count, dim = h.shape
        qkv = attn.qkv(h).reshape(batch, count, 3, attn.num_heads, dim // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
        a = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)
        attentions.append(a)
        out = attn.proj(attn.norm((a @ v).transpose(1, 2).reshape(batch, count, dim)))
        tokens = tokens + block.ls1(out)
        tokens = tokens + block.ls2(block.mlp(block.norm2(tokens)))
    return vit.norm(tokens), attentions


def _brute_rollout(attentions: list[Tensor], sample: int) -> np.ndarray:
    result = None
    for a in attentions:
        mean = a[sample].detach().double().numpy().mean(0)
        mixed = 0.5 * mean + 0.5 * np.eye(mean.shape[0])
        mixed = mixed / mixed.sum(1, keepdims=True)
        result = mixed if result is None else mixed @ result
    return result


def _brute_gradient_rollout(attentions: list[Tensor], grads: tuple[Tensor, ...], sample: int) -> np.ndarray:
    count = attentions[0].shape[-1]
    relevance = np.eye(count)  # R = I, R <- R + Ā R, as written in the paper
    for a, g in zip(attentions, grads):
        weighted = np.maximum(g[sample].double().numpy() * a[sample].detach().double().numpy(), 0).mean(0)
        relevance = relevance + weighted @ relevance
    return relevance


def _read(relevance: np.ndarray, prefix: int, rows: str) -> np.ndarray:
    columns = relevance[:, prefix:]
    return (columns[0] if rows == "class" else columns[prefix:].mean(0)).reshape(6, 8)


@pytest.mark.parametrize("rows", ["patches", "class"])
@pytest.mark.parametrize("key", list(TOKEN_MODELS))
def test_attention_rollout_matches_brute_force(key: str, rows: str) -> None:
    model = _adapter(key)
    vit, prefix = model.feature_extractor.model, model.feature_extractor.num_prefix_tokens
    images, _ = _inputs(model)
    with torch.no_grad():
        tokens, attentions = _manual_forward(vit, images)
        torch.testing.assert_close(tokens_to_grid(tokens, (6, 8), prefix), model.forward_features(images))
    explainer = AttentionRollout(model, rows=rows)
    maps = explainer(images)
    for b in range(images.shape[0]):
        expected = torch.from_numpy(_read(_brute_rollout(attentions, b), prefix, rows)).float()
        # min-max stretches float32 round-off of a near-uniform random-init relevance: 1e-3
        torch.testing.assert_close(maps[b], normalize_saliency(expected.unsqueeze(0), SIZE)[0], atol=1e-3, rtol=0)
    assert bool((maps.flatten(1).amax(1) == 1).all())  # not a constant map
    # the raw relevance, tightly
    with torch.no_grad():
        ours = readout(rollout(attentions), prefix, (6, 8), rows)
    for b in range(images.shape[0]):
        expected = torch.from_numpy(_read(_brute_rollout(attentions, b), prefix, rows))
        torch.testing.assert_close(ours[b].double(), expected, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("key", ["vit", "reg_gap"])
def test_gradient_rollout_matches_brute_force(key: str) -> None:
    model = _adapter(key)
    vit, prefix = model.feature_extractor.model, model.feature_extractor.num_prefix_tokens
    images, refs = _inputs(model)
    tokens, attentions = _manual_forward(vit, images)
    scores = mean_similarity(pool(tokens_to_grid(tokens, (6, 8), prefix), "gap"), refs, "cosine")
    grads = torch.autograd.grad(scores.sum(), attentions)
    maps = GradientRollout(model)(images, refs)
    assert all(p.grad is None for p in model.parameters())  # no parameter's .grad touched
    for b in range(images.shape[0]):
        expected = _read(_brute_gradient_rollout(attentions, grads, b), prefix, "patches")
        expected = normalize_saliency(torch.from_numpy(expected).float().unsqueeze(0), SIZE)[0]
        torch.testing.assert_close(maps[b], expected, atol=1e-3, rtol=0)
    assert bool((maps.flatten(1).amax(1) == 1).all())  # not a constant map
    # the gradient depends on the references: another decision, another map
    assert (GradientRollout(model)(images, -refs) - maps).abs().max() > 1e-2


def test_fused_attention_is_only_switched_off_during_the_hooked_pass() -> None:
    model = _adapter("vit")
    attention = model.feature_extractor.model.blocks[0].attn
    attention.fused_attn = True
    images, refs = _inputs(model)
    with torch.no_grad():
        before = model(images)
    AttentionRollout(model)(images)
    GradientRollout(model)(images, refs)
    assert attention.fused_attn is True
    assert not attention.attn_drop._forward_hooks  # hooks removed
    with torch.no_grad():
        torch.testing.assert_close(model(images), before)


def test_rollout_refuses_models_without_global_attention() -> None:
    swin = create_backbone("timm:swin_tiny_patch4_window7_224", img_size=64, depths=(1, 1), num_heads=(1, 2),
                           embed_dim=16, window_size=4)
    model = SimilarityAdapter(feature_extractor=swin, pooling="gap")
    with pytest.raises(ValueError, match="no ViT-style token model with global self-attention"):
        AttentionRollout(model)
    assert set(explainers_for(model)) == set(EXPLAINERS) | {"token_fam"}  # GAP: token_fam, no rollouts
    assert set(explainers_for(_adapter("vit"))) == set(EXPLAINERS) | set(TOKEN_EXPLAINERS)


class _Score(nn.Module):
    """pytorch-grad-cam's view: images -> (B, 1) decision score against fixed references."""

    def __init__(self, vit: nn.Module, references: Tensor, prefix: int) -> None:
        super().__init__()
        self.vit, self.references, self.prefix = vit, references, prefix

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.vit.forward_features(x)
        embedding = tokens[:, self.prefix:].mean(1)
        refs = self.references.unsqueeze(0).expand(x.shape[0], -1, -1)
        return mean_similarity(embedding, refs, "cosine").unsqueeze(1)


@pytest.mark.parametrize("key", ["vit", "deit_distilled"])
def test_gradcam_on_a_vit_agrees_with_pytorch_grad_cam(key: str) -> None:
    import timm
    from pytorch_grad_cam import GradCAM as TheirGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _adapter(key)
    prefix = model.feature_extractor.num_prefix_tokens
    images, refs = _inputs(model, batch=3)
    refs = refs[:1].expand(3, -1, -1)  # theirs takes one target model: shared references
    # their backward fills .grad: a copy with the same weights
    theirs = timm.create_model(TOKEN_MODELS[key], pretrained=False, dynamic_img_size=True, **VIT).eval()
    theirs.reset_classifier(0)
    theirs.load_state_dict(model.feature_extractor.model.state_dict())
    cam = TheirGradCAM(_Score(theirs, refs[0], prefix), target_layers=[theirs.norm],
                       reshape_transform=lambda t: tokens_to_grid(t, (6, 8), prefix))
    expected = cam(images, targets=[ClassifierOutputTarget(0)] * 3)
    np.testing.assert_allclose(GradCAM(model)(images, refs).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("name", sorted({**EXPLAINERS, **TOKEN_EXPLAINERS}))
def test_every_explainer_runs_on_a_token_grid(name: str) -> None:
    model = _adapter("deit_distilled")
    images, refs = _inputs(model)
    explainer = {**EXPLAINERS, **TOKEN_EXPLAINERS}[name](model)
    maps = explainer(images, refs if explainer.needs_references else None)
    assert maps.shape == (2, *SIZE) and maps.dtype == torch.float32
    assert bool(torch.isfinite(maps).all()) and maps.min() >= 0 and maps.max() <= 1
    assert bool((maps.flatten(1).amax(1) == 1).all())  # a real map per image, not a constant one


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_every_explainer_runs_on_swin_and_convnext_grids(name: str) -> None:
    for backbone in (
        create_backbone("timm:swin_tiny_patch4_window7_224", img_size=64, depths=(1, 1), num_heads=(1, 2),
                        embed_dim=16, window_size=4),
        create_backbone("timm:convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
    ):
        torch.manual_seed(0)
        model = SimilarityAdapter.from_timm(backbone).eval()  # Swin: GAP; ConvNeXt: GAP + its held LayerNorm
        images = torch.randn(2, 3, 64, 96)
        with torch.no_grad():
            refs = model(torch.randn(4, 3, 64, 96)).view(2, 2, -1)
        explainer = EXPLAINERS[name](model)
        maps = explainer(images, refs if explainer.needs_references else None)
        assert maps.shape == (2, 64, 96) and bool(torch.isfinite(maps).all())
        assert maps.min() >= 0 and maps.max() <= 1


def test_rollouts_work_inside_inference_mode() -> None:
    # a Lightning validation loop runs under inference mode; its tensors are inference tensors
    model = _adapter("vit")
    images, refs = _inputs(model)
    expected = GradientRollout(model)(images, refs), AttentionRollout(model)(images)
    with torch.inference_mode():
        frozen_images, frozen_refs = images.clone(), refs.clone()
        got = GradientRollout(model)(frozen_images, frozen_refs), AttentionRollout(model)(frozen_images)
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("head", ["none", "linear", "layer_norm"])
def test_token_fam_splits_the_similarity_over_tokens_exactly(head: str) -> None:
    from fam_lightning import fam
    from fam_lightning.explainers import FAMExplainer, TokenFAM

    torch.manual_seed(0)
    if head == "layer_norm":  # a GAP ViT's own fc_norm head, held fixed
        backbone = create_backbone("timm:vit_wee_patch16_reg1_gap_256", **VIT)
        with torch.no_grad():
            backbone.model.fc_norm.bias.uniform_(-0.5, 0.5)
        model = SimilarityAdapter.from_timm(backbone).eval()
    else:
        model = _adapter("deit_distilled")
        if head == "linear":
            model.projection = nn.Linear(32, 16)
    images, _ = _inputs(model)
    with torch.no_grad():
        grid = model.forward_features(images)
        refs = model(torch.randn(6, 3, *SIZE)).view(2, 3, -1)
    shares = TokenFAM(model).contributions(grid, refs)
    parts = fam.decompose(fam.pool(grid, "gap"), refs, "cosine", model.projection)
    assert shares.shape == (2, 6, 8)
    torch.testing.assert_close(shares.sum((1, 2)), parts.weights.sum(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shares.sum((1, 2)) + parts.residual, parts.similarity, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(FAMExplainer(model).weights(grid, refs), parts.weights)
    if head == "linear":  # by hand: c_ij = (W^T beta) . A_ij / (h w)
        v = model.embed(grid)
        beta = (refs / refs.norm(dim=2, keepdim=True)).mean(1) / v.norm(dim=1, keepdim=True)
        back = beta @ model.projection.weight
        for b, i, j in ((0, 0, 0), (1, 5, 7), (1, 2, 3)):
            torch.testing.assert_close(shares[b, i, j], (back[b] * grid[b, :, i, j]).sum() / 48)


def test_token_fam_shows_the_evidence_where_signed_features_leave_fam_blank() -> None:
    from fam_lightning import fam
    from fam_lightning.explainers import FAMExplainer, TokenFAM

    class Signed(nn.Module):  # token-like features: negative everywhere but where one channel fires
        pooling, projection, similarity = "gap", None, "dot"

        def forward_features(self, x: Tensor) -> Tensor:
            return x

        def embed(self, feature_maps: Tensor) -> Tensor:
            return fam.pool(feature_maps, "gap")

    grid = torch.full((1, 2, 4, 4), -1.0)
    grid[0, 0, 1, 2] = 3.0  # channel 0 fires at (1, 2)
    refs = torch.tensor([[[1.0, 0.0]]])
    assert float(FAMExplainer(Signed()).from_feature_maps(grid, refs).max()) == 0.0  # relu of a negative sum
    maps = TokenFAM(Signed()).from_feature_maps(grid, refs)
    assert maps[0, 1, 2] == 1 and float(maps.sum()) == 1.0
    with pytest.raises(ValueError, match="needs pooling='gap'"):
        model = Signed()
        model.pooling = "gmp"
        TokenFAM(model).from_feature_maps(grid, refs)
