"""What the terminal shows: Lightning's messages that fam-lightning itself causes are silenced.

Kept: every warning a user can act on. Dropped: advertising tips (litlogger / litmodels), a
deprecation inside Lightning's own ``_pytree`` helper, LightningCLI's note on ``args`` (the tools
pass their own arguments on purpose), and the "add the following callbacks" note when a tool loads a
training checkpoint without the training run's callbacks (it does not need them).
"""

from __future__ import annotations

import logging
import warnings

_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r"LightningCLI's args parameter is intended to run from within Python.*",
    r".*callbacks used to create the checkpoint need to be provided during `Trainer` instantiation.*",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """Install the filters (idempotent)."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropTips) for f in handler.filters):
                handler.addFilter(_DropTips())
