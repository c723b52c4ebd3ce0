"""Explain a checkpoint's decisions on image files: ``python explain.py --ckpt_path <ckpt> --images ...``.

A thin wrapper over :mod:`fam_lightning.tools.explain` (installed as ``fam-explain``); see its help.
"""

import sys

from fam_lightning.tools.explain import main

if __name__ == "__main__":
    sys.exit(main())
