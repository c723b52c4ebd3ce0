"""Convert a published NPID / MoCo checkpoint into a Lightning checkpoint of MemoryBankModel, once.

    fam-convert lemniscate_resnet50.pth.tar npid_resnet50.ckpt
    fam-convert moco_v2_800ep_pretrain.pth.tar moco_v2.ckpt --bank-size 1281167

(``python -m fam_lightning.importers ...``, the command of 0.2, runs the same.)

The result loads with ``weights_only``-safe tensors and Lightning's usual
paths (``MemoryBankModel.load_from_checkpoint``, ``train.py validate
--ckpt_path``, with ``--model.init_args.import_checkpoint null``), so the
published file (and, for NPID, its ``weights_only=False`` unpickling) is
needed only once. MoCo has no bank: ``--bank-size`` (the number of training
images) reserves it, and it is computed over the training set before the
first evaluation.

The checkpoint names its classes as ``fam-train`` writes them (the model's
``_class_path`` with its arguments; a ``ContrastiveDataModule`` at
``--image-size`` without a root), so the tools read it too::

    python train.py validate --config configs/contrastive/npid_resnet50_import.yaml \
        --ckpt_path npid_resnet50.ckpt --data.root /data/imagenet
    fam-explain --ckpt_path npid_resnet50.ckpt --images photo.jpg --references ref1.jpg ref2.jpg
    fam-evaluate --ckpt_path npid_resnet50.ckpt --data.root /data/imagenet --name NPID --table results/imagenet

A file that cannot be read or converted ends with one sentence naming it (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning

from fam_lightning.checkpoint_io import AtomicCheckpointIO
from fam_lightning.importers import ImportedModel, PublishedCheckpointError, read_published_checkpoint
from fam_lightning.models import MemoryBankModel
from fam_lightning.models.published import import_into

MODEL_CLASS = "fam_lightning.models.MemoryBankModel"
DATAMODULE_CLASS = "fam_lightning.datamodules.ContrastiveDataModule"
# what LightningCLI stores beside a model's arguments; load_from_checkpoint builds the class through it
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
PUBLISHED_IMAGE_SIZE = 224  # lemniscate.pytorch and MoCo train and evaluate ImageNet at 224 x 224


def model_for(imported: ImportedModel, **kwargs: object) -> MemoryBankModel:
    """A :class:`~fam_lightning.models.MemoryBankModel` shaped like ``imported``, its weights loaded.

    Args:
        imported: a checkpoint read by :func:`read_published_checkpoint`.
        **kwargs: further model arguments (``bank_size``, ``knn_k``, ...).
    """
    model = MemoryBankModel(
        method="npid" if imported.source == "npid" else "moco", backbone=imported.arch, backbone_slope=0.0,
        head=imported.head, embedding_dim=imported.embedding_dim, **kwargs,
    )
    import_into(model, imported)
    return model


def convert(source: str | Path, target: str | Path, bank_size: int | None = None,
            image_size: int = PUBLISHED_IMAGE_SIZE, knn_k: int = 200) -> Path:
    """Write ``target`` (a Lightning checkpoint) from the published checkpoint ``source``.

    ``knn_k``: the neighbours of the model's kNN vote (200, as lemniscate and the FAM paper).

    Raises:
        PublishedCheckpointError: ``source`` unreadable, refused, or a MoCo file without ``bank_size``.
    """
    imported = read_published_checkpoint(source)
    if imported.bank is None and bank_size is None:
        raise PublishedCheckpointError(
            f"{source} is a {imported.source} checkpoint without a bank: pass --bank-size <number of training "
            "images> (the bank is computed over them before evaluating)"
        )
    if bank_size is not None and bank_size < 1:
        raise PublishedCheckpointError(f"--bank-size must be the number of training images (>= 1), got {bank_size}")
    if knn_k < 1:
        raise PublishedCheckpointError(f"--knn-k must be >= 1, got {knn_k}")
    kwargs: dict[str, object] = {"knn_k": knn_k, **({} if imported.bank is not None else {"bank_size": bank_size})}
    model = model_for(imported, **kwargs)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": {"_class_path": MODEL_CLASS, **dict(model.hparams), "_instantiator": INSTANTIATOR},
        "datamodule_hyper_parameters": {
            "_class_path": DATAMODULE_CLASS, "image_size": image_size, "two_views": False, "bank_loader": False,
        },
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "imported_from": str(source),
    }
    model.on_save_checkpoint(checkpoint)
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    return Path(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fam-convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="published checkpoint (lemniscate.pytorch NPID or MoCo v1 / v2)")
    parser.add_argument("target", help="Lightning checkpoint to write (.ckpt)")
    parser.add_argument("--bank-size", type=int, default=None, help="training images (MoCo only)")
    parser.add_argument("--image-size", type=int, default=PUBLISHED_IMAGE_SIZE,
                        help="model input side recorded for the tools (default: %(default)s, as published)")
    parser.add_argument("--knn-k", type=int, default=200, help="neighbours of the kNN vote (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = convert(args.source, args.target, args.bank_size, args.image_size, args.knn_k)
    except PublishedCheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
