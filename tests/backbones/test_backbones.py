"""Backbones: documented 84 px shapes, LeakyReLU(0.1) only, gradients, DropBlock, FAM sum property."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fam_lightning.backbones import create_backbone, list_backbones
from fam_lightning.backbones.resnet12 import DropBlock
from fam_lightning.explainers import FAMExplainer
from fam_lightning.models import FewShotClassifier

# (C, h, w) at 84 x 84, as documented in each backbone's module docstring.
FEATURES_AT_84 = {
    "conv4": (64, 5, 5),
    "conv64f": (64, 21, 21),
    "resnet12": (640, 5, 5),
    "resnet18": (512, 3, 3),
    "wrn28_10": (640, 21, 21),
}
BACKBONES = sorted(FEATURES_AT_84)
# Episode image side for the float64 sum-property test: 84 px where it is cheap on
# 2 CPU cores, smaller for the heavy ones (feature maps still 2 x 2 and 4 x 4).
EPISODE_SIZE = {"conv4": 84, "conv64f": 84, "resnet18": 84, "resnet12": 32, "wrn28_10": 16}
RELU_LIKE = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.elu, F.gelu, F.silu, F.hardtanh}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small convs on a shared 2-core machine: a second intra-op thread mostly spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_all_five_backbones_are_registered() -> None:
    assert set(BACKBONES) <= set(list_backbones())


@pytest.mark.parametrize("name", BACKBONES)
def test_feature_map_shape_at_84_and_out_channels(name: str) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        features = backbone.forward_features(torch.randn(2, 3, 84, 84))
    assert features.shape == (2, *FEATURES_AT_84[name])
    assert backbone.out_channels == FEATURES_AT_84[name][0]
    assert torch.isfinite(features).all()


class _RecordActivations(TorchFunctionMode):
    """Records every activation call (and its slope) made during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.relu_like: list[Any] = []
        self.leaky_slopes: list[float] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in RELU_LIKE:
            self.relu_like.append(func)
        elif func in (F.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu, torch._C._nn.leaky_relu_):
            slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            self.leaky_slopes.append(float(slope))
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_activation_is_leaky_relu_0_1(name: str) -> None:
    backbone = create_backbone(name).eval()
    modules = list(backbone.modules())
    activations = [m for m in modules if type(m).__module__ == nn.LeakyReLU.__module__]
    assert activations and all(type(m) is nn.LeakyReLU for m in activations), activations
    assert all(m.negative_slope == 0.1 for m in activations)
    # functional calls too: no F.relu hidden inside a forward
    with torch.no_grad(), _RecordActivations() as record:
        backbone(torch.randn(1, 3, 16, 16))
    assert record.relu_like == []
    assert record.leaky_slopes and set(record.leaky_slopes) == {0.1}


@pytest.mark.parametrize("name", BACKBONES)
def test_slope_is_a_kwarg(name: str) -> None:
    backbone = create_backbone(name, slope=0.2)
    slopes = {m.negative_slope for m in backbone.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}


@pytest.mark.parametrize("name", BACKBONES)
def test_gradients_reach_the_first_conv(name: str) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name).train()  # train mode: dropout / DropBlock in the graph
    first_conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 3
    backbone.forward_features(torch.randn(2, 3, 16, 16)).square().mean().backward()
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_forward_is_forward_features() -> None:
    backbone = create_backbone("conv64f").eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.forward_features(x))


def test_unknown_name_lists_the_registered_backbones() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet13'") as info:
        create_backbone("resnet13")
    for name in list_backbones():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["conv4", "conv64f"])
def test_conv_width_is_a_kwarg_of_every_block(name: str) -> None:
    """``backbone_kwargs: {channels: C}`` widens Conv4 / Conv64F (every block), the map size unchanged."""
    model = FewShotClassifier(backbone=name, num_classes=4, backbone_kwargs={"channels": 24}).eval()
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24] * 4 and convs[1].in_channels == 24
    assert model.backbone.out_channels == 24 and model.global_head.in_features == 24
    with torch.no_grad():
        assert model.backbone(torch.randn(2, 3, 84, 84)).shape == (2, 24, *FEATURES_AT_84[name][1:])


def test_tiny_wrn_from_kwargs_and_bad_depth() -> None:
    backbone = create_backbone("wrn28_10", depth=10, widen_factor=1).eval()
    assert backbone.out_channels == 64
    assert sum(isinstance(m, nn.Conv2d) for m in backbone.modules()) == 1 + 3 * 2 + 2  # stem, 2 per block, projections (16 -> 16 is identity)
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 84, 84)).shape == (2, 64, 21, 21)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        create_backbone("wrn28_10", depth=27)


def test_resnet12_regularisers_match_metaoptnet() -> None:
    backbone = create_backbone("resnet12")
    drops = [block.drop for block in backbone.blocks]
    assert [type(d) for d in drops] == [nn.Dropout, nn.Dropout, DropBlock, DropBlock]
    assert drops[0].p == 0.1 and drops[2].drop_rate == 0.1 and drops[2].block_size == 5


# -- DropBlock ------------------------------------------------------------------------------
def test_dropblock_is_the_identity_in_eval() -> None:
    block = DropBlock(drop_rate=0.5, block_size=3).eval()
    x = torch.randn(2, 4, 9, 9)
    assert block(x) is x
    backbone = create_backbone("resnet12", channels=(8, 8, 8, 8)).eval()
    x = torch.randn(2, 3, 84, 84)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone(x))


def _brute_force_mask(seeds: torch.Tensor, block_size: int, height: int, width: int) -> torch.Tensor:
    """Zero a block_size square at and below-right of every seed, one loop per seed."""
    mask = torch.ones(*seeds.shape[:2], height, width, dtype=torch.float64)
    for b, c, i, j in seeds.nonzero().tolist():
        mask[b, c, i : i + block_size, j : j + block_size] = 0.0
    return mask


def test_dropblock_known_answer() -> None:
    block = DropBlock(drop_rate=0.1, block_size=5).train()
    x = torch.ones(2, 3, 10, 10, dtype=torch.float64)
    torch.manual_seed(3)
    out = block(x)
    # same draws by hand: seeds where a full 5 x 5 block fits, at MetaOptNet's gamma
    torch.manual_seed(3)
    gamma = 0.1 / 25 * 100 / 36
    seeds = torch.rand(2, 3, 6, 6, dtype=torch.float64) < gamma
    expected_mask = _brute_force_mask(seeds, 5, 10, 10)
    assert seeds.any()
    expected = expected_mask * (expected_mask.numel() / expected_mask.sum())
    torch.testing.assert_close(out, expected)


def test_dropblock_drops_about_drop_rate_in_block_squares() -> None:
    block_size, drop_rate = 5, 0.1
    block = DropBlock(drop_rate=drop_rate, block_size=block_size).train()
    x = torch.ones(8, 64, 10, 10, dtype=torch.float64)
    torch.manual_seed(0)
    out = block(x)
    zeros = (out == 0).to(torch.float64)
    assert abs(zeros.mean().item() - drop_rate) < 0.02
    # every zero lies in an all-zero block_size square inside the map (a morphological opening)
    full_windows = -F.max_pool2d(-zeros, block_size, stride=1)
    union = F.max_pool2d(F.pad(full_windows, (block_size - 1,) * 4), block_size, stride=1)
    torch.testing.assert_close(union, zeros)
    # kept activations are rescaled so the mean is preserved
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, out.numel() / kept.numel()))
    torch.testing.assert_close(out.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_dropblock_block_size_clipped_to_small_maps() -> None:
    block = DropBlock(drop_rate=0.3, block_size=5).train()
    torch.manual_seed(0)
    out = block(torch.ones(4, 64, 2, 2))
    assert out.shape == (4, 64, 2, 2)
    zeros = out == 0
    assert zeros.any() and (zeros.all(dim=(2, 3)) == zeros.any(dim=(2, 3))).all()  # whole 2 x 2 maps


def test_dropblock_linear_schedule() -> None:
    block = DropBlock(drop_rate=0.1, block_size=3, warmup_steps=10).train()
    x = torch.ones(1, 1, 6, 6)
    assert float(block.current_drop_rate()) == 0.0
    for _ in range(5):
        block(x)
    assert float(block.current_drop_rate()) == pytest.approx(0.05)
    block.eval()(x)
    assert int(block.num_steps) == 5  # eval forwards do not advance the schedule
    block.train()
    for _ in range(20):
        block(x)
    assert float(block.current_drop_rate()) == pytest.approx(0.1)
    assert "num_steps" in block.state_dict()


# -- FAM on each backbone -------------------------------------------------------------------
def make_episode(size: int, ways: int = 2, shots: int = 1, queries: int = 2) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    box = torch.tensor([[size / 8, size / 8, size * 5 / 8, size * 5 / 8]], dtype=torch.float64)
    return {
        "support": torch.randn(ways * shots, 3, size, size, generator=g, dtype=torch.float64),
        "query": torch.randn(ways * queries, 3, size, size, generator=g, dtype=torch.float64),
        "support_target": torch.arange(ways).repeat_interleave(shots),
        "query_target": torch.arange(ways).repeat_interleave(queries),
        "support_class": torch.arange(ways).repeat_interleave(shots),
        "query_class": torch.arange(ways).repeat_interleave(queries),
        "support_box": box.repeat(ways * shots, 1),
        "query_box": box.repeat(ways * queries, 1),
        "ways": ways, "shots": shots, "queries": queries,
    }


@pytest.mark.parametrize("name", BACKBONES)
def test_fam_weights_sum_to_the_decision_score(name: str) -> None:
    torch.manual_seed(0)
    model = FewShotClassifier(backbone=name, num_classes=4).double().eval()
    size = EPISODE_SIZE[name]
    batch = make_episode(size)
    with torch.no_grad():
        out = model.episode_forward(batch)
        inputs = model.explanation_inputs(batch)
        weights = FAMExplainer(model).weights(inputs.feature_maps, inputs.references)
    assert inputs.feature_maps.shape[1] == model.backbone.out_channels
    predicted = out["scores"].argmax(1)
    decision = out["scores"].gather(1, predicted.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(weights.sum(1), decision)
    maps = FAMExplainer(model)(batch["query"], inputs.references)
    assert maps.shape == (4, size, size)
    assert not torch.isnan(maps).any() and maps.min() >= 0 and maps.max() <= 1


def test_resnet50_bottleneck_shapes_and_relu() -> None:
    from fam_lightning.backbones import create_backbone

    net = create_backbone("resnet50").eval()
    assert net.out_channels == 2048
    with torch.no_grad():
        out = net.forward_features(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2048, 2, 2)
    assert any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == 23_508_032  # torchvision resnet50 minus its FC
