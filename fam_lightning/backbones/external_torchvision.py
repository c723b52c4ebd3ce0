"""torchvision backbones (``torchvision:<name>``): the classifier cut before its global pooling.

See :mod:`fam_lightning.backbones.external` for which part each model keeps; weights come from a local file only.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fam_lightning.backbones.external_base import ExternalBackbone, _dry_run
from fam_lightning.backbones.weights import load_into, read_state_dict_file

DRY_RUN_SIDES = (64, 224, 299)


class TorchvisionBackbone(ExternalBackbone):
    """A torchvision classifier cut before its global pooling (``features``: the part kept)."""

    def __init__(self, features: nn.Module, out_channels: int, name: str) -> None:
        super().__init__(out_channels, name)
        self.features = features

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        return self.features(x)



def _torchvision_backbone(
    name: str, model_name: str, pretrained_path: str | None, kwargs: dict
) -> TorchvisionBackbone:
    import torchvision

    try:
        model = torchvision.models.get_model(model_name, weights=None, **kwargs)
    except ValueError:
        known = ", ".join(torchvision.models.list_models(module=torchvision.models)[:12])
        raise ValueError(
            f"backbone {name!r}: torchvision has no classification model {model_name!r} (e.g. {known}, ...)"
        ) from None
    if pretrained_path is not None:
        head = [n for n, _ in model.named_children() if n in ("fc", "classifier", "heads", "head")]
        aux = [n for n, _ in model.named_children() if n.lower().startswith("aux")]
        load_into(model, read_state_dict_file(pretrained_path), name, str(pretrained_path), optional=head + aux)
    features = torchvision_features(model, name)
    channels = _dry_run(name, features, features, sides=[(side, side) for side in DRY_RUN_SIDES], freeze_unused=False)
    return TorchvisionBackbone(features, channels, name)


def torchvision_features(model: nn.Module, name: str) -> nn.Module:
    """The part of a torchvision classifier before its global pooling (see the module docstring)."""
    import torchvision.models as tvm

    if isinstance(model, tvm.SwinTransformer | tvm.VisionTransformer):
        raise ValueError(
            f"backbone {name!r} is a transformer ({type(model).__name__}): its features are tokens, "
            "not (B, C, h, w) conv feature maps; use a convolutional model or fam_lightning.adapter"
        )
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        if isinstance(model, tvm.DenseNet):
            return nn.Sequential(OrderedDict(features=features, relu=nn.ReLU()))  # DenseNet.forward: F.relu
        return features
    children = list(model.named_children())
    pools = [i for i, (_, child) in enumerate(children) if isinstance(child, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ValueError(
            f"backbone {name!r} ({type(model).__name__}) has neither a `features` block nor an `avgpool` "
            "child, so where its feature maps end is not known; wrap it with "
            "fam_lightning.adapter.SimilarityAdapter(model, target_layer=...) instead"
        )
    kept = [(child_name, child) for child_name, child in children[: pools[0]] if not child_name.lower().startswith("aux")]
    return nn.Sequential(OrderedDict(kept))

