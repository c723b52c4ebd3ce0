"""Lightning callbacks."""

from callbacks.fam import FAMCallback

__all__ = ["FAMCallback"]
