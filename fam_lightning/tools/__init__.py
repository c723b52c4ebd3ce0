"""Command-line tools over trained checkpoints, each a ``main(argv) -> int``.

- :mod:`fam_lightning.tools.explain` (``fam-explain``): overlays for image files.
- :mod:`fam_lightning.tools.evaluate` (``fam-evaluate``): test a checkpoint, add a row to a paper-style table.
- :mod:`fam_lightning.tools.sanity` (``fam-sanity``): randomisation sanity checks of the explainers.
"""
