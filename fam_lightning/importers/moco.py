"""facebookresearch/moco v1 / v2 checkpoints (He et al. 2020; Chen et al. 2020).

``main_moco.py`` saves ``{'epoch', 'arch', 'state_dict', 'optimizer'}`` with
the DataParallel / DDP-wrapped ``MoCo`` builder: ``module.encoder_q.*`` and
``module.encoder_k.*`` (torchvision ResNets whose ``fc`` is Linear(2048, 128)
in v1, ``Sequential(Linear(2048, 2048), ReLU, Linear(2048, 128))`` in v2:
``fc.0``, ``fc.2``), ``module.queue`` (128 x K, one key per column) and
``module.queue_ptr``. Released or converted files may lack the ``module.``
prefix and the key encoder; the query encoder is then copied. Plain tensors
only (an ``argparse.Namespace`` of the script's ``args`` is read as an inert
stand-in and ignored), read by :func:`~fam_lightning.importers.safe_load.load_published_file`.

MoCo keeps no bank of training embeddings: the importing model computes its
kNN bank over the user's training set before its first evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from fam_lightning.backbones.weights import strip_prefix, unwrap_state_dict
from fam_lightning.importers.common import ImportedModel, split_resnet_encoder
from fam_lightning.importers.safe_load import PublishedCheckpointError, load_published_file


def is_moco_state(state: dict[str, Tensor]) -> bool:
    """Whether a (``module.``-stripped) state_dict is a MoCo builder's."""
    return any(key.startswith("encoder_q.") for key in state)


def read_moco(path: str | Path, checkpoint: Any | None = None) -> ImportedModel:
    """Read a MoCo v1 / v2 checkpoint into an :class:`ImportedModel` (no bank; the queue if present)."""
    source = str(path)
    if checkpoint is None:
        checkpoint = load_published_file(path)
    try:
        state = strip_prefix(unwrap_state_dict(checkpoint, source), "module.")
    except ValueError as error:
        raise PublishedCheckpointError(f"{source} is neither a lemniscate.pytorch NPID nor a MoCo checkpoint: "
                                       f"{error}") from None
    if not is_moco_state(state):
        raise PublishedCheckpointError(
            f"{source} is neither a lemniscate.pytorch NPID nor a MoCo checkpoint: no encoder_q.* keys "
            f"(found e.g. {sorted(state)[:4]})"
        )
    query = strip_prefix({k: v for k, v in state.items() if k.startswith("encoder_q.")}, "encoder_q.")
    arch, head, backbone, projection = split_resnet_encoder(query, source)
    keys = strip_prefix({k: v for k, v in state.items() if k.startswith("encoder_k.")}, "encoder_k.")
    if keys:
        key_arch, key_head, key_backbone, key_projection = split_resnet_encoder(keys, f"{source} (encoder_k)")
        if (key_arch, key_head) != (arch, head):
            raise PublishedCheckpointError(f"{source}: encoder_k is a {key_arch}/{key_head} but encoder_q a {arch}/{head}")
    else:  # a released file without the key encoder: MoCo initialises it as a copy
        key_backbone, key_projection = dict(backbone), dict(projection)
    dim = projection["weight" if head == "linear" else "2.weight"].shape[0]
    queue, ptr = state.get("queue"), state.get("queue_ptr")
    if queue is not None:
        if queue.dim() != 2 or queue.shape[0] != dim:
            raise PublishedCheckpointError(f"{source}: queue must be ({dim}, K), got {tuple(queue.shape)}")
        queue = F.normalize(queue.t().float(), dim=1)  # (K, D), one key per row as FeatureQueue holds them
    named = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    if isinstance(named, str) and named != arch:
        raise PublishedCheckpointError(f"{source}: 'arch' says {named!r} but the weights are a {arch}")
    return ImportedModel(
        source="moco_v2" if head == "mlp" else "moco_v1", path=source, arch=arch, head=head, embedding_dim=dim,
        backbone=backbone, projection=projection, key_backbone=key_backbone, key_projection=key_projection,
        queue=queue, queue_ptr=int(ptr.reshape(-1)[0]) if ptr is not None else 0,
        extras={"epoch": checkpoint.get("epoch") if isinstance(checkpoint, dict) else None},
    )
