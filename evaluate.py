"""Test a checkpoint and add its row to a paper-style table: ``python evaluate.py --ckpt_path <ckpt> --name <row>``.

A thin wrapper over :mod:`fam_lightning.tools.evaluate` (installed as ``fam-evaluate``); see its help.
"""

import sys

from fam_lightning.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
