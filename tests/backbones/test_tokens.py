"""Token models through the FAM seam: patch-token grids, sizes, own pooled heads, the sum property."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from fam_lightning import fam
from fam_lightning.adapter import SimilarityAdapter
from fam_lightning.backbones import create_backbone
from fam_lightning.backbones.tokens import TokenGrid, grid_size, tokens_to_grid
from fam_lightning.explainers import FAMExplainer
from fam_lightning.models import FewShotClassifier
from fam_lightning.similarity import mean_similarity

VIT = dict(img_size=48, patch_size=8, depth=2, embed_dim=32, num_heads=2)
MODELS = {
    "vit": ("vit_tiny_patch16_224", VIT, 1),  # class token
    "deit_distilled": ("deit_tiny_distilled_patch16_224", VIT, 2),  # class + distillation token
    "reg_gap": ("vit_wee_patch16_reg1_gap_256", VIT, 1),  # one register, GAP + fc_norm
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=64, depths=(1, 1), num_heads=(1, 2), embed_dim=16,
                                                  window_size=4), 0),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 0),
}
NON_SQUARE = (48, 64)


def _build(key: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Our backbone and timm's own model with the same weights (both eval)."""
    name, kwargs, _ = MODELS[key]
    torch.manual_seed(seed)
    ours = create_backbone(f"timm:{name}", **kwargs).eval()
    with torch.no_grad():  # non-trivial norm parameters, so a skipped or misplaced norm shows
        for module in ours.modules():
            if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    theirs = timm.create_model(name, pretrained=False, dynamic_img_size=True, **kwargs) if key != "convnext" \
        else timm.create_model(name, pretrained=False, **kwargs)
    theirs.reset_classifier(0)
    theirs.load_state_dict(ours.model.state_dict())
    return ours, theirs.eval()


@pytest.mark.parametrize("key", list(MODELS))
def test_grid_holds_exactly_the_patch_tokens(key: str) -> None:
    ours, theirs = _build(key)
    x = torch.randn(2, 3, *NON_SQUARE)
    with torch.no_grad():
        grid = ours.forward_features(x)
        raw = theirs.forward_features(x)
    if key in ("swin", "convnext"):
        stride = 4 * 2 if key == "swin" else 32
        assert grid.shape == (2, ours.out_channels, NON_SQUARE[0] // stride, NON_SQUARE[1] // stride)
        pooled = theirs.head.global_pool(raw).flatten(1)  # timm's own pooling of its own output
    else:
        prefix = MODELS[key][2]
        assert ours.num_prefix_tokens == prefix
        assert grid.shape == (2, 32, 6, 8) and raw.shape == (2, prefix + 48, 32)
        # token prefix + 8 i + j sits at (i, j): row-major, prefix dropped
        torch.testing.assert_close(grid[:, :, 2, 5], raw[:, prefix + 2 * 8 + 5])
        pooled = theirs.pool(raw, pool_type="avg")  # mean over the patch tokens (timm skips the prefix)
    torch.testing.assert_close(fam.pool(grid, "gap"), pooled)


@pytest.mark.parametrize("key", ["reg_gap", "convnext", "swin"])
def test_own_pooled_head_is_timms_pre_logits(key: str) -> None:
    ours, theirs = _build(key)
    adapter = SimilarityAdapter.from_timm(ours).eval()
    x = torch.randn(3, 3, *NON_SQUARE)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), theirs.forward_head(theirs.forward_features(x), pre_logits=True))
    assert isinstance(adapter.projection, nn.LayerNorm if key != "swin" else type(None))


@pytest.mark.parametrize("key", ["vit", "deit_distilled"])
def test_class_token_heads_are_refused_by_name(key: str) -> None:
    ours, _ = _build(key)
    with pytest.raises(ValueError, match="reads out its class token"):
        SimilarityAdapter.from_timm(ours)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("key", ["reg_gap", "convnext"])
def test_layer_norm_head_held_fixed_sums_to_the_similarity_with_its_bias_as_residual(key: str, similarity: str) -> None:
    ours, _ = _build(key)
    adapter = SimilarityAdapter.from_timm(ours, similarity=similarity).eval()
    norm = adapter.projection
    x, refs_images = torch.randn(3, 3, *NON_SQUARE), torch.randn(3 * 4, 3, *NON_SQUARE)
    with torch.no_grad():
        grid = adapter.forward_features(x)
        refs = adapter(refs_images).view(3, 4, -1)
        v = adapter.embed(grid)
    u = fam.pool(grid, "gap")
    parts = fam.decompose(u, refs, similarity, norm)
    torch.testing.assert_close(parts.similarity, mean_similarity(v, refs, similarity))
    torch.testing.assert_close(parts.weights.sum(1) + parts.residual, parts.similarity)
    # the residual is exactly the LN bias's share: c_d = v_d beta_d, bias share = beta . b
    if similarity == "cosine":
        beta = (refs / refs.norm(dim=2, keepdim=True)).mean(1) / v.norm(dim=1, keepdim=True)
    else:
        beta = refs.mean(1)
    torch.testing.assert_close(parts.residual, beta @ norm.bias, atol=1e-5, rtol=1e-4)
    assert parts.weights.sum(1).abs().min() > 1e-3  # the channels carry the similarity, not nothing
    # the held LN is affine in u: the weights are u * (W^T beta) with W = diag(gamma / sigma) (I - 11^T / C)
    centred = u - u.mean(1, keepdim=True)
    sigma = (centred.square().mean(1, keepdim=True) + norm.eps).sqrt()
    back = (beta * norm.weight) / sigma
    expected = u * (back - back.mean(1, keepdim=True))
    torch.testing.assert_close(parts.weights, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key", list(MODELS))
def test_family_gap_head_on_tokens_keeps_the_sum_property(key: str) -> None:
    ours, _ = _build(key)
    adapter = SimilarityAdapter(feature_extractor=ours, pooling="gap", similarity="cosine").eval()
    with torch.no_grad():
        grid = adapter.forward_features(torch.randn(2, 3, *NON_SQUARE))
        refs = adapter(torch.randn(6, 3, *NON_SQUARE)).view(2, 3, -1)
    weights = FAMExplainer(adapter).weights(grid, refs)
    torch.testing.assert_close(weights.sum(1), mean_similarity(adapter.embed(grid), refs, "cosine"))
    maps = FAMExplainer(adapter)(torch.randn(2, 3, *NON_SQUARE), refs)
    assert maps.shape == (2, *NON_SQUARE) and bool(((maps >= 0) & (maps <= 1)).all())


def test_fixed_size_model_fed_another_size_names_both_sizes() -> None:
    backbone = create_backbone("timm:vit_tiny_patch16_224", img_size=84, patch_size=12, depth=1, embed_dim=24,
                               num_heads=2, dynamic_img_size=False)
    assert backbone.forward_features(torch.randn(1, 3, 84, 84)).shape == (1, 24, 7, 7)
    with pytest.raises(ValueError, match=r"built for 84 x 84 px inputs but got 96 x 128"):
        backbone.forward_features(torch.randn(1, 3, 96, 128))


def test_issue_example_builds_at_its_own_size_and_takes_any_size() -> None:
    # the issue's first failure: a dry run at 64 / 224 px of a model built for 84
    model = FewShotClassifier(backbone="timm:vit_tiny_patch16_224", num_classes=4,
                              backbone_kwargs={"img_size": 84, "patch_size": 12, "depth": 1}).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 84, 84)).shape == (1, 192, 7, 7)
        assert model.forward_features(torch.randn(1, 3, 96, 132)).shape == (1, 192, 8, 11)
    # a non-square built size: the dry run runs at it, fixed size kept
    backbone = create_backbone("timm:vit_tiny_patch16_224", img_size=(40, 56), patch_size=8, depth=1,
                               embed_dim=16, num_heads=2, dynamic_img_size=False)
    assert backbone.out_channels == 16 and backbone.grid_size((40, 56)) == (5, 7)
    # the issue's second failure: Swin's channels-last output
    swin = FewShotClassifier(backbone="timm:swin_tiny_patch4_window7_224", num_classes=4,
                             backbone_kwargs=dict(MODELS["swin"][1])).eval()
    with torch.no_grad():
        assert swin.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 32, 8, 8)


def test_unused_head_norm_is_frozen() -> None:
    ours, _ = _build("reg_gap")
    frozen = {name for name, p in ours.named_parameters() if not p.requires_grad}
    assert frozen == {"model.fc_norm.weight", "model.fc_norm.bias"}


def test_tokens_to_grid_and_token_grid_on_a_users_transformer() -> None:
    tokens = torch.arange(2 * 13 * 3, dtype=torch.float32).view(2, 13, 3)  # 1 prefix + 3 x 4 patches
    grid = tokens_to_grid(tokens, (3, 4), num_prefix_tokens=1)
    assert grid.shape == (2, 3, 3, 4)
    torch.testing.assert_close(grid[1, :, 2, 1], tokens[1, 1 + 2 * 4 + 1])
    with pytest.raises(ValueError, match="do not fill a 4 x 4 grid"):
        tokens_to_grid(tokens, (4, 4), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="not a square grid"):
        tokens_to_grid(tokens, num_prefix_tokens=1)
    assert grid_size((96, 128), 16) == (6, 8) and grid_size((97, 128), 16, padded=True) == (7, 8)

    # a user's own ViT (here timm's, as a plain nn.Module): hook its final norm, tokens -> grid
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, **VIT).eval()
    adapter = SimilarityAdapter(net, target_layer="norm", pooling="gap",
                                token_grid=TokenGrid(patch_size=8, num_prefix_tokens=1)).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert adapter.forward_features(x).shape == (2, 32, 12, 16)
        refs = adapter(torch.randn(2, 3, 96, 128)).unsqueeze(1)
        torch.testing.assert_close(adapter(x), net.pool(net.forward_features(x), pool_type="avg"))
    assert FAMExplainer(adapter)(x, refs).shape == (2, 96, 128)
    with pytest.raises(ValueError, match="not both"):
        SimilarityAdapter(net, target_layer="norm", token_grid=TokenGrid(8, 1), reshape_transform=lambda a: a)


def test_weights_from_another_image_size_get_their_position_embedding_resampled(tmp_path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT)  # 48 px: a 6 x 6 grid
    torch.save(source.state_dict(), tmp_path / "vit48.pth")
    kwargs = dict(VIT, img_size=64)  # 8 x 8
    backbone = create_backbone("timm:vit_tiny_patch16_224", pretrained_path=str(tmp_path / "vit48.pth"), **kwargs)
    expected = timm.layers.resample_abs_pos_embed(source.pos_embed.detach(), new_size=[8, 8], old_size=[6, 6],
                                                  num_prefix_tokens=1)
    torch.testing.assert_close(backbone.model.pos_embed.detach(), expected)
    torch.testing.assert_close(backbone.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
