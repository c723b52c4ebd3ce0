"""Backbones from timm and torchvision: ``timm:<name>`` and ``torchvision:<name>``.

Both are built without weights (nothing is downloaded at run time); weights
come from a local file (``pretrained_path``), loaded into the full model
before its classifier is cut off, so a file saved from the full classifier
loads as is. What FAM sees is the protocol, not the model:

- timm: ``forward_features`` is timm's own (the last feature maps before
  ``forward_head``); the classifier is removed (``reset_classifier(0)``) and
  parameters ``forward_features`` never reaches (e.g. a pre-logits conv of
  ``forward_head``, a GAP ViT's ``fc_norm``) are frozen, so DDP and optimisers
  see only the used ones. Token models become grids of their patch tokens
  (:mod:`fam_lightning.backbones.tokens`): ViT / DeiT / EVA / BEiT-style
  sequences drop their ``num_prefix_tokens`` (class, distillation, registers)
  and are laid out on ``patch_embed.dynamic_feat_size`` of the actual input;
  Swin-style channels-last maps are permuted to channels first. Models whose
  constructor takes ``dynamic_img_size`` get ``True`` unless
  ``backbone_kwargs`` say otherwise, so any input size works (position
  embeddings resampled); a fixed-size model fed another size stops with an
  error naming both sizes. :meth:`TimmBackbone.pooled_head` is the model's
  own pooled head (pooling + ``fc_norm`` / ConvNeXt's norm) for
  :meth:`fam_lightning.adapter.SimilarityAdapter.from_timm`.
- torchvision: the model cut before global pooling. Models with a
  ``features`` block (VGG, AlexNet, DenseNet, MobileNet, EfficientNet,
  ConvNeXt, SqueezeNet) use it (DenseNet plus the ReLU its forward applies
  after it; ConvNeXt's LayerNorm sits after the pooling, in the head, and is
  left out); the others (ResNet, ResNeXt, Wide ResNet, RegNet, GoogLeNet,
  Inception v3) keep their children before the ``avgpool`` child, auxiliary
  classifiers skipped. Anything else gets an error naming the model.

``out_channels`` comes from one dry run (timm: at the size the model is built
for, ``img_size``), which also checks that the output is a (B, C, h, w) grid:
torchvision transformers are refused by name.

Layout: :mod:`~fam_lightning.backbones.external_base` (the base class, the dry run),
:mod:`~fam_lightning.backbones.external_timm`, :mod:`~fam_lightning.backbones.external_torchvision`;
this module chooses between them and keeps every name importable from here.
"""

from __future__ import annotations

from torch import nn

from fam_lightning.backbones.external_base import ExternalBackbone
from fam_lightning.backbones.external_timm import (
    TimmBackbone,
    _timm_backbone,
    timm_layout,
    timm_pooled_head,
)
from fam_lightning.backbones.external_torchvision import (
    DRY_RUN_SIDES,
    TorchvisionBackbone,
    _torchvision_backbone,
    torchvision_features,
)

__all__ = [
    "DRY_RUN_SIDES",
    "PREFIXES",
    "ExternalBackbone",
    "TimmBackbone",
    "TorchvisionBackbone",
    "create_external_backbone",
    "is_external",
    "timm_layout",
    "timm_pooled_head",
    "torchvision_features",
]

PREFIXES = ("timm", "torchvision")


def is_external(name: str) -> bool:
    """Whether ``name`` names a timm / torchvision model (``timm:<name>``, ``torchvision:<name>``)."""
    return name.split(":", 1)[0] in PREFIXES and ":" in name


def create_external_backbone(name: str, pretrained_path: str | None = None, **kwargs: object) -> nn.Module:
    """Build ``timm:<model>`` or ``torchvision:<model>`` without downloading anything.

    Args:
        name: ``timm:<model>`` or ``torchvision:<model>``.
        pretrained_path: optional local weight file of the full model
            (see :func:`fam_lightning.backbones.weights.read_state_dict_file`).
        **kwargs: forwarded to ``timm.create_model`` / ``torchvision.models.get_model``.
    """
    library, model_name = name.split(":", 1)
    if library == "timm":
        return _timm_backbone(name, model_name, pretrained_path, kwargs)
    if library == "torchvision":
        return _torchvision_backbone(name, model_name, pretrained_path, kwargs)
    raise ValueError(f"backbone {name!r}: unknown library {library!r}; expected one of {', '.join(PREFIXES)}")

