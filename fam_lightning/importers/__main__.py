"""``python -m fam_lightning.importers SOURCE TARGET``: the 0.2 name of ``fam-convert`` (fam_lightning.tools.convert)."""

import sys

from fam_lightning.tools.convert import main  # an entry point, not a reader: nothing imports this module

if __name__ == "__main__":
    sys.exit(main())
