"""Explainers compared with bootstrap intervals on the same decisions: ``python benchmark.py --ckpt_path <ckpt>``.

A thin wrapper over :mod:`fam_lightning.tools.benchmark` (installed as ``fam-benchmark``); see its help.
"""

import sys

from fam_lightning.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
