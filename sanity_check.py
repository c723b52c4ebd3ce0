"""Randomisation sanity check of the explainers: ``python sanity_check.py --ckpt_path <ckpt>``.

A thin wrapper over :mod:`fam_lightning.tools.sanity` (installed as ``fam-sanity``); see its help.
"""

import sys

from fam_lightning.tools.sanity import main

if __name__ == "__main__":
    sys.exit(main())
