"""Backbones: plain ``nn.Module``s exposing ``forward_features`` and ``out_channels``."""

from fam_lightning.backbones import conv4 as _conv4  # noqa: F401  (registers)
from fam_lightning.backbones import conv64f as _conv64f  # noqa: F401  (registers)
from fam_lightning.backbones import resnet12 as _resnet12  # noqa: F401  (registers)
from fam_lightning.backbones import resnet18 as _resnet18  # noqa: F401  (registers)
from fam_lightning.backbones import resnet50 as _resnet50  # noqa: F401  (registers)
from fam_lightning.backbones import wrn as _wrn  # noqa: F401  (registers)
from fam_lightning.backbones.registry import build_backbone, create_backbone, list_backbones, register_backbone

__all__ = ["build_backbone", "create_backbone", "list_backbones", "register_backbone"]
