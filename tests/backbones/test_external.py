"""timm / torchvision backbones and local weight files: the cut, the loading, the errors, a CLI fit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from fam_lightning.backbones import build_backbone, create_backbone
from fam_lightning.backbones.weights import read_state_dict_file
from fam_lightning.explainers import FAMExplainer
from fam_lightning.models import FewShotClassifier
from tests.helpers.cli import REPO, SMALL_EPISODE_ARGS, run_cli
from tests.helpers.events import read_events




def _torchvision_resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None).eval()
    for module in model.modules():  # non-trivial BN statistics, so a wrong mapping shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def test_torchvision_resnet_is_cut_before_pooling_and_loads_a_wrapped_file(tmp_path: Path) -> None:
    source = _torchvision_resnet18()
    path = tmp_path / "weights.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = create_backbone("torchvision:resnet18", pretrained_path=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone.forward_features(x)
        # pooling + fc of the cut recovers the full classifier: nothing else was dropped
        logits = source.fc(maps.mean((2, 3)))
        torch.testing.assert_close(logits, source(x))
    assert backbone.out_channels == 512 and maps.shape == (2, 512, 2, 2)
    assert not any(name.startswith("fc") for name, _ in backbone.features.named_children())


def test_registered_resnets_take_torchvision_weights(tmp_path: Path) -> None:
    source = _torchvision_resnet18()
    path = tmp_path / "tv.pth"
    torch.save(source.state_dict(), path)
    ours = create_backbone("resnet18", pretrained_path=str(path), slope=0.0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = nn.Sequential(*list(source.children())[:-2])(x)
        torch.testing.assert_close(ours.forward_features(x), expected)


def test_timm_backbone_uses_forward_features_and_loads_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False).eval()
    path = tmp_path / "timm.pth"
    torch.save({"model": source.state_dict()}, path)
    backbone = create_backbone("timm:resnet10t", pretrained_path=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_features(x), source.forward_features(x))
    assert backbone.out_channels == source.num_features == 512
    assert not any("fc." in name for name, _ in backbone.named_parameters())  # classifier removed


def test_timm_parameters_forward_features_never_uses_are_frozen() -> None:
    # mobilenetv3's conv_head belongs to forward_head: unused by FAM's seam, so not trained
    backbone = create_backbone("timm:mobilenetv3_small_050")
    frozen = {name for name, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all("conv_head" in name for name in frozen)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("torchvision:shufflenet_v2_x0_5", "neither a `features` block nor an `avgpool`"),
        ("torchvision:vit_b_16", "transformer"),
        ("torchvision:no_such_net", "no classification model 'no_such_net'"),
        ("timm:no_such_net", "timm has no model 'no_such_net'"),
        ("timm:mixer_s32_224", r"returns \(1, 49, 512\).*token_grid"),  # tokens with no prefix-token layout
        ("no_such_net", "unknown backbone 'no_such_net'"),
    ],
)
def test_unsupported_models_are_named(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_backbone(name)


def test_weight_file_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_backbone("torchvision:resnet18", pretrained_path=str(tmp_path / "missing.pth"))
    partial = {k: v for k, v in _torchvision_resnet18().state_dict().items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing keys: layer4\.0\.bn1\.bias"):
        create_backbone("torchvision:resnet18", pretrained_path=str(tmp_path / "partial.pth"))
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="holds no state_dict"):
        read_state_dict_file(tmp_path / "nothing.pth")
    wide = {k: v for k, v in torchvision.models.resnet34(weights=None).state_dict().items()}
    torch.save(wide, tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"another architecture\?\): layer1\.2\.bn1\.bias"):
        create_backbone("torchvision:resnet18", pretrained_path=str(tmp_path / "r34.pth"))


def test_unexpected_keys_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = dict(_torchvision_resnet18().state_dict(), **{"extra.weight": torch.zeros(1)})
    torch.save(state, tmp_path / "extra.pth")
    with caplog.at_level(logging.INFO):
        create_backbone("torchvision:resnet18", pretrained_path=str(tmp_path / "extra.pth"))
    assert "extra.weight" in caplog.text


def test_external_backbone_models_explain_with_fam() -> None:
    model = FewShotClassifier(backbone="timm:resnet10t", multitask=False).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        references = model(torch.randn(3, 2, 3, 64, 64).flatten(0, 1)).view(3, 2, -1)
    maps = FAMExplainer(model)(images, references)
    assert maps.shape == (3, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(ValueError, match="given by name"):
        build_backbone(nn.Conv2d(3, 3, 1), pretrained_path="w.pth")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["timm:resnet10t", "torchvision:resnet18"])
def test_fewshot_cli_fits_external_backbone_with_fam(backbone: str, tmp_path: Path, data_dir: Path) -> None:
    name = backbone.replace(":", "_") + "_synthetic"  # the shipped config naming this backbone
    args = []
    weights = None
    if backbone.startswith("torchvision"):
        weights = _torchvision_resnet18(seed=3).state_dict()
        torch.save({"state_dict": weights}, tmp_path / "w.pth")
        # lr 0: the checkpoint's convolutions must be the file's (BN statistics still move)
        args += ["--model.init_args.pretrained_path", str(tmp_path / "w.pth"), "--model.init_args.lr", "0"]
    run_cli(
        ["fit", "--config", str(REPO / "configs" / "fewshot" / f"{name}.yaml"), *args,
         "--data.data_dir", str(data_dir), "--data.synthetic_classes", "24",
         "--data.synthetic_images_per_class", "20", *SMALL_EPISODE_ARGS, "--data.train_episodes", "1",
         "--data.val_episodes", "1", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path,
    )
    log_dir = tmp_path / "logs" / name / "version_0"
    scalars, images = read_events(log_dir)
    assert images["val/fam_probe"], "no FAM probe grid logged"
    for tag in ("val/acc", "val/fam_energy_pointing_game", "val/fam_iou", "val/fam_average_drop", "train/loss"):
        assert tag in scalars, f"{tag} missing for {backbone}"
    if weights is not None:
        state = torch.load(log_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        torch.testing.assert_close(state["backbone.features.conv1.weight"], weights["conv1.weight"])
        torch.testing.assert_close(state["backbone.features.layer4.1.conv2.weight"], weights["layer4.1.conv2.weight"])
