"""The class-token decomposition: its identity, its exactness where nothing is linearised, its refusals."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from fam_lightning.class_token import class_token_map, decompose_class_token
from fam_lightning.similarity import mean_similarity

VIT = dict(img_size=48, patch_size=8, depth=2, embed_dim=32, num_heads=2, dynamic_img_size=True)
MODELS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "vit_registers": ("vit_tiny_patch16_224", {"reg_tokens": 2}),  # class token + 2 registers
}
SIZE = (48, 64)


def _vit(key: str, zero_mlp: bool = False) -> nn.Module:
    name, extra = MODELS[key]
    torch.manual_seed(0)
    vit = timm.create_model(name, pretrained=False, **VIT, **extra).eval()
    vit.reset_classifier(0)
    with torch.no_grad():
        for module_name, module in vit.named_modules():
            if module_name.endswith("qkv"):  # a non-uniform attention
                module.weight.normal_(0.0, 1.5 / module.in_features**0.5)
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)
        if zero_mlp:  # the last block's MLP branch contributes nothing: nothing left to linearise
            vit.blocks[-1].mlp.fc2.weight.zero_()
            vit.blocks[-1].mlp.fc2.bias.zero_()
    return vit


def _references(vit: nn.Module, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        images = torch.randn(batch * 3, 3, *SIZE, generator=g)
        return vit.forward_head(vit.forward_features(images), pre_logits=True).view(batch, 3, -1)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("key", list(MODELS))
def test_parts_sum_to_the_models_own_similarity(key: str, similarity: str) -> None:
    vit = _vit(key)
    images, refs = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2)), _references(vit)
    parts = decompose_class_token(vit, images, refs, similarity)
    with torch.no_grad():
        own = mean_similarity(vit.forward_head(vit.forward_features(images), pre_logits=True), refs, similarity)
    torch.testing.assert_close(parts.similarity, own)
    total = parts.patches.sum((1, 2)) + parts.prefix.sum(1) + parts.class_path + parts.remainder
    torch.testing.assert_close(total, own, atol=1e-5, rtol=1e-5)
    assert parts.patches.shape == (2, 6, 8)
    assert parts.prefix.shape == (2, {"vit": 0, "deit_distilled": 0, "vit_registers": 2}[key])
    assert parts.patches.abs().amax((1, 2)).min() > 0  # the patches do carry the decision
    maps = class_token_map(parts, SIZE)
    assert maps.shape == (2, *SIZE) and bool((maps.flatten(1).amax(1) == 1).all())


@pytest.mark.parametrize("key", list(MODELS))
def test_exact_when_the_last_mlp_branch_is_zero(key: str) -> None:
    # with no MLP branch, z = mean_r norm(y_r) with norm's std held fixed is affine in y, so for dot
    # similarity the remainder must be exactly the final norm's bias share: any error in the
    # attention read-out's reconstruction of y (a token, a head, a bias missed) would show here
    vit = _vit(key, zero_mlp=True)
    images, refs = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3)), _references(vit)
    parts = decompose_class_token(vit, images, refs, "dot")
    bias_share = refs.mean(1) @ vit.norm.bias
    torch.testing.assert_close(parts.remainder, bias_share, atol=1e-5, rtol=1e-4)


def test_pooled_models_and_other_similarities_are_refused() -> None:
    gap = timm.create_model("vit_wee_patch16_reg1_gap_256", pretrained=False, **VIT).eval()
    with pytest.raises(ValueError, match="does not read out its class token"):
        decompose_class_token(gap, torch.randn(1, 3, *SIZE), torch.randn(1, 1, 32))
    with pytest.raises(ValueError, match="cosine or dot"):
        decompose_class_token(_vit("vit"), torch.randn(1, 3, *SIZE), torch.randn(1, 1, 32), "euclidean")
