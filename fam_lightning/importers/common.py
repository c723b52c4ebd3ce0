"""What every importer produces: weights under our names, plus the bank / queue a checkpoint holds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from fam_lightning.backbones.weights import strip_prefix, torchvision_resnet_to_ours
from fam_lightning.importers.safe_load import PublishedCheckpointError

# (blocks per stage, bottleneck?) -> the registered backbone that has them
RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), True): "resnet50"}


@dataclass
class ImportedModel:
    """A published contrastive model, renamed to :class:`~fam_lightning.models.MemoryBankModel`'s modules.

    Attributes:
        source: "npid", "moco_v1" or "moco_v2".
        path: the file read.
        arch: registered backbone name ("resnet18", "resnet50").
        head: "linear" (NPID, MoCo v1) or "mlp" (MoCo v2).
        embedding_dim: D of the head's output.
        backbone: state_dict of our ResNet (``fam_lightning.backbones.resnet18.ResNet``).
        projection: state_dict of the head (``weight``/``bias`` or ``0.*``/``2.*``).
        key_backbone, key_projection: MoCo's key encoder (a copy of the query
            encoder when the file has none); None for NPID.
        bank: (N, D) NPID memory bank, its rows as saved (see :mod:`~fam_lightning.importers.npid`), or None.
        queue: (K, D) MoCo negatives, or None; queue_ptr its next row.
        extras: other values read (epoch, NCE normaliser Z, ...).
    """

    source: str
    path: str
    arch: str
    head: str
    embedding_dim: int
    backbone: dict[str, Tensor]
    projection: dict[str, Tensor]
    key_backbone: dict[str, Tensor] | None = None
    key_projection: dict[str, Tensor] | None = None
    bank: Tensor | None = None
    queue: Tensor | None = None
    queue_ptr: int = 0
    extras: dict[str, object] = field(default_factory=dict)


def resnet_arch(state: Mapping[str, Tensor], source: str) -> str:
    """The registered backbone matching a torchvision-layout ResNet state_dict (resnet18 / resnet50)."""
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for key in state if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        blocks.append(len(indices))
    bottleneck = "layer1.0.conv3.weight" in state
    try:
        return RESNETS[(tuple(blocks), bottleneck)]
    except KeyError:
        kind = "bottleneck" if bottleneck else "basic"
        raise PublishedCheckpointError(
            f"{source}: a ResNet with {kind} blocks {tuple(blocks)} per stage; importable are "
            "resnet18 (basic 2-2-2-2) and resnet50 (bottleneck 3-4-6-3)"
        ) from None


def split_resnet_encoder(state: Mapping[str, Tensor], source: str) -> tuple[str, str, dict, dict]:
    """A torchvision ResNet with its ``fc`` head -> (arch, head kind, our backbone state, head state).

    ``fc`` is a Linear (NPID, MoCo v1) or MoCo v2's ``Sequential(Linear, ReLU, Linear)`` (``fc.0``, ``fc.2``).
    """
    arch = resnet_arch(state, source)
    head_state = strip_prefix({k: v for k, v in state.items() if k.startswith("fc.")}, "fc.")
    if "0.weight" in head_state and "2.weight" in head_state:
        head = "mlp"
    elif "weight" in head_state:
        head = "linear"
    else:
        raise PublishedCheckpointError(f"{source}: the encoder has no fc head (fc.weight, or fc.0 / fc.2 of MoCo v2)")
    backbone = torchvision_resnet_to_ours({k: v for k, v in state.items() if not k.startswith("fc.")})
    return arch, head, backbone, head_state
