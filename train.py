"""fam-lightning command line: ``python train.py {fit,validate,test,predict} --config <yaml>``.

A thin wrapper over :mod:`fam_lightning.cli` (installed as ``fam-train``).
"""

from fam_lightning.cli import main

if __name__ == "__main__":
    main()
