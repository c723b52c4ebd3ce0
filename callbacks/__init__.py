"""Lightning callbacks."""

from .checkpoint import ModelCheckpoint
from .fam import FAMCallback

__all__ = ["FAMCallback", "ModelCheckpoint"]
