"""Convert a published NPID / MoCo checkpoint into a Lightning checkpoint of MemoryBankModel, once.

    python -m fam_lightning.importers lemniscate_resnet50.pth.tar npid_resnet50.ckpt
    python -m fam_lightning.importers moco_v2_800ep_pretrain.pth.tar moco_v2.ckpt --bank-size 1281167

The result loads with ``weights_only``-safe tensors and Lightning's usual
paths (``MemoryBankModel.load_from_checkpoint``, ``train.py validate
--ckpt_path``, with ``--model.init_args.import_checkpoint null``), so the
published file (and, for NPID, its ``weights_only=False`` unpickling) is
needed only once. MoCo has no bank: ``--bank-size`` (the number of training
images) reserves it, and it is computed over the training set before the
first evaluation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning

from fam_lightning.checkpoint_io import AtomicCheckpointIO
from fam_lightning.importers import model_for, read_published_checkpoint


def convert(source: str | Path, target: str | Path, bank_size: int | None = None) -> Path:
    """Write ``target`` (a Lightning checkpoint) from the published checkpoint ``source``."""
    imported = read_published_checkpoint(source)
    if imported.bank is None and bank_size is None:
        raise ValueError(f"{source} is a {imported.source} checkpoint without a bank: pass --bank-size "
                         "<number of training images> (the bank is computed over them before evaluating)")
    kwargs: dict[str, object] = {} if imported.bank is not None else {"bank_size": bank_size}
    model = model_for(imported, **kwargs)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "imported_from": str(source),
    }
    model.on_save_checkpoint(checkpoint)
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    return Path(target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fam_lightning.importers", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="published checkpoint (lemniscate.pytorch NPID or MoCo v1 / v2)")
    parser.add_argument("target", help="Lightning checkpoint to write (.ckpt)")
    parser.add_argument("--bank-size", type=int, default=None, help="training images (MoCo only)")
    args = parser.parse_args(argv)
    path = convert(args.source, args.target, args.bank_size)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
