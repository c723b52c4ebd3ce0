"""A memory bank's link to its training data: the size check, the labels, the images it is computed from,
and whether the training views fit the backbone.

The bank has one row per training image, in the data module's sorted order; its labels are the data
module's ``train_labels``. A bank from a file (an imported NPID memory, a checkpoint) must have as many
rows as the training folder has images: a mismatch is one sentence naming the file and the folder, raised
once the file is known (at once for ``import_checkpoint``, else when the Trainer restores its checkpoint).
"""

from __future__ import annotations

from typing import Any

import torch

from fam_lightning.importers import PublishedCheckpointError

__all__ = ["BankData"]


class BankData:
    """Mixin of :class:`~fam_lightning.models.MemoryBankModel`: the bank's data module, size check, labels.

    Expects ``self.bank`` (a :class:`~fam_lightning.memory.MemoryBank` or None), ``self.hparams``,
    ``self.backbone``, ``self.memory``, ``self.memory_imported``, ``self._build_bank(size)`` and
    ``self._build_memory()``.
    """

    def attach_datamodule(self, datamodule: Any) -> None:
        """Outside a Trainer (e.g. ``fam-sanity``): take the bank's size check, labels and, for an
        imported MoCo, the training images its bank is computed from, from ``datamodule``."""
        self._datamodule = datamodule
        self._use_datamodule(datamodule, relabel=False)

    def bank_datamodule(self) -> Any:
        """The datamodule whose training set the bank rows are: the Trainer's, else the attached one."""
        trainer_datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        return trainer_datamodule if trainer_datamodule is not None else getattr(self, "_datamodule", None)

    def _use_datamodule(self, datamodule: Any, relabel: bool) -> None:
        images = getattr(datamodule, "num_train_images", None)
        if self.bank is None:
            if images is None:
                raise ValueError("MemoryBankModel needs bank_size or a datamodule with num_train_images")
            self._build_bank(int(images))
        elif images is not None and int(images) != self.bank.size:
            # raised once the bank's file is known: at once for import_checkpoint, else when a Trainer
            # restores its checkpoint (after setup), else when training / evaluation starts
            self._bank_size_mismatch = (int(images), getattr(datamodule, "data_root", None))
            if self.hparams.import_checkpoint is not None or self._trainer is None:
                self._raise_bank_size_mismatch()
            return
        if self.hparams.num_classes is None and getattr(datamodule, "num_classes", None) is not None:
            self.hparams["num_classes"] = int(datamodule.num_classes)
        if relabel or bool((self.bank.labels < 0).all()):
            self._labels_from_datamodule()

    def _take_instances(self, instances: int) -> None:
        """The data's instances per image: NPID's memory rows (with ``refresh_bank``), or a ValueError."""
        if instances > 1 and not (self.hparams.method == "npid" and self.hparams.refresh_bank):
            raise ValueError(f"the data gives {instances} instances per image (local_crop_grid), which only NPID "
                             "with refresh_bank=True uses (a memory row each); set local_crop_grid to 0")
        if instances > 1 and self.memory_imported:
            raise ValueError(f"the data gives {instances} instances per image (local_crop_grid), but the imported "
                             f"NPID memory has one row per image; set local_crop_grid to 0 to train on from it")
        if self.hparams.instances_per_image is None:
            self.hparams["instances_per_image"] = instances
            if self.memory is not None and self.memory.size != self.bank.size * instances:
                self._build_memory()  # the bank (e.g. an imported one) is kept
        elif self.hparams.instances_per_image != instances and self.memory is not None:
            raise ValueError(f"instances_per_image={self.hparams.instances_per_image} but the data gives "
                             f"{instances} per image (local_crop_grid squared); set them equal or leave it unset")

    def _labels_from_datamodule(self) -> None:
        """Bank labels = the datamodule's ``train_labels`` (the label of every training image), if it has them."""
        labels = getattr(self.bank_datamodule(), "train_labels", None)
        if labels is not None:
            self.bank.set_labels(torch.as_tensor(labels, dtype=torch.long))

    def _raise_bank_size_mismatch(self) -> None:
        """Raise the bank-size mismatch :meth:`setup` found, naming the file the bank came from, if any."""
        mismatch = getattr(self, "_bank_size_mismatch", None)
        if mismatch is None:
            return
        images, root = mismatch
        folder = f"{root}/train" if root is not None else "the datamodule's training set"
        source = self.hparams.get("import_checkpoint") or (self._trainer.ckpt_path if self._trainer else None)
        if source is None:
            raise PublishedCheckpointError(
                f"the memory bank has {self.bank.size} rows (bank_size) but {folder} has {images} images: use the "
                f"training set the bank was built from, or for a new model set --model.init_args.bank_size {images} "
                "or leave it null to read it from the data"
            )
        raise PublishedCheckpointError(
            f"{source}: its memory bank has {self.bank.size} rows, one per training image, but {folder} has "
            f"{images} images; data.root/train must be the training set the checkpoint was trained on "
            "(the same images, whose sorted order gives the rows)"
        )

    @torch.no_grad()
    def _check_view_size(self, side: int | None) -> None:
        """A clear error when the training views are too small for the backbone (e.g. a small ``local_crop``)."""
        if side is None:
            return
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            self.backbone.forward_features(torch.zeros(1, 3, side, side, device=self.device))
        except RuntimeError as error:
            raise ValueError(
                f"training views of {side} x {side} px are too small for the backbone "
                f"{type(self.backbone).__name__} ({str(error).splitlines()[0]}); use a larger data.local_crop "
                "or data.image_size"
            ) from None
        finally:
            self.backbone.train(was_training)
