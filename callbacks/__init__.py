"""Lightning callbacks."""

from .fam import FAMCallback

__all__ = ["FAMCallback"]
