"""Explainers compared with statistics on the same decisions of a checkpoint: ``fam-benchmark``.

    fam-benchmark --ckpt_path logs/quickstart/version_0/checkpoints/last.ckpt --out results/benchmark_quickstart
    fam-benchmark --ckpt_path <ckpt> --explainers fam gradcam eigencam --decisions 1000 --data.root /data/CUB_200_2011

The model's own evaluation (``trainer.test``, or ``--stage validate``) runs
its test / validation steps, which say for every decision what it was made
against (:class:`fam_lightning.protocol.ExplanationInputs`: support images of
the predicted class, kNN neighbours with their votes, the top-1 gallery
image); any family works. The first ``--decisions`` correctly classified
decisions (the paper's protocol; ``--all_decisions`` takes wrong ones too) are
explained by every requested explainer, batch by batch on the model's
device, and scored per decision:

- energy pointing game and localisation IoU (eq. 19, 20; decisions with boxes);
- Average Drop and Increase in Confidence (eq. 21, 22; ``Y`` the step's own
  score, ``O`` one pass of image x map; decisions with ``Y > 0``);
- deletion / insertion AUC of the raw decision score (``--steps`` steps, mean
  colour baseline), and the mean curves;
- time per image: the explainer's time for the batch (device-synchronised,
  after one untimed warm-up call) over the batch size.

A uniform map (``uniform``) is scored beside the explainers: the chance level.
Per metric the tables give the mean and its 95 % percentile-bootstrap interval
over decisions (:mod:`fam_lightning.metrics.bootstrap`, seeded), and for every
explainer the paired difference to FAM on the same decisions (the same
resampled decisions for both), with its interval. Written to ``--out``:
``summary.csv``, ``summary.md``, ``decisions.csv`` (every decision's values,
with its id), ``curves.png`` (deletion / insertion curves with bands),
``metrics.png`` (energy / IoU / AD / IC with intervals), ``differences.png``
(paired differences to FAM).

Model and data module come from the checkpoint, overridden as in every
``fam-*`` tool (:mod:`fam_lightning.tools.common`): ``--config``, then
``--data.<argument> <value>`` / ``--model.<argument> <value>``, and
``--model_class`` / ``--data_class``. The default
``--decisions 1000`` makes every explainer's energy interval narrower than
+-1.5 points on the quickstart model: the per-decision energy's sd is 9-22
points there (measured on 1000 decisions: CF-CAM 8.9, FAM 11.0, Eigen-CAM
21.5), and 1.96 x 21.5 / sqrt(1000) = 1.33.

Layout: :mod:`~fam_lightning.tools.benchmark_recorder` (the callback that explains and scores),
:mod:`~fam_lightning.tools.benchmark_stats` (intervals, paired differences),
:mod:`~fam_lightning.tools.benchmark_report` (tables, CSV, plots); this module is the command, and every
name stays importable from here.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

from fam_lightning.console import quiet_lightning
from fam_lightning.explainers import EXPLAINERS
from fam_lightning.loading import build_datamodule, load_model, read_checkpoint
from fam_lightning.tools.common import Overrides, ToolParser, add_checkpoint_arguments, parse_tool_args
from fam_lightning.tools.sanity import data_overrides
from fam_lightning.tools.benchmark_recorder import (  # noqa: F401  (re-exported: the names fam-benchmark always had)
    METRICS,
    REFERENCE,
    UNIFORM,
    DecisionRecorder,
    Metric,
    Records,
    UniformMap,
    _Enough,
)
from fam_lightning.tools.benchmark_report import (  # noqa: F401  (re-exported: the names fam-benchmark always had)
    decision_rows,
    markdown_tables,
    write_outputs,
)
from fam_lightning.tools.benchmark_stats import (  # noqa: F401  (re-exported: the names fam-benchmark always had)
    summarize,
)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="fam-benchmark", description=__doc__.splitlines()[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--explainers", nargs="+", default=list(EXPLAINERS), choices=list(EXPLAINERS),
                        help="default: all ten; fam is the reference of the paired differences")
    parser.add_argument("--decisions", type=int, default=1000,
                        help="decisions to explain (default 1000: energy intervals < +-1.5 points on the quickstart)")
    parser.add_argument("--all_decisions", action="store_true",
                        help="explain wrong decisions too (default: correctly classified ones, as the paper)")
    parser.add_argument("--stage", choices=("test", "validate"), default="test",
                        help="whose decisions: the test split (default) or the validation split")
    parser.add_argument("--steps", type=int, default=10, help="deletion / insertion curve steps (2 x steps "
                        "forward passes per decision and explainer)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (and of the data draws)")
    parser.add_argument("--ic_rtol", type=float, default=None, help="Increase-in-Confidence tolerance")
    parser.add_argument("--data_class", default=None, help="the data module class (dotted path), overriding the "
                        "checkpoint's and the config's (also --data.class_path)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="results/benchmark", help="output folder")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace, overrides: Overrides) -> tuple[dict[str, dict[str, np.ndarray]], DecisionRecorder,
                                                                   str]:
    """Evaluate the checkpoint with the recorder; returns its results, the recorder and a description."""
    L.seed_everything(args.seed, verbose=False)
    model = load_model(args.ckpt_path, overrides.model_class, args.device, overrides.model)
    checkpoint = read_checkpoint(args.ckpt_path)
    datamodule = build_datamodule(checkpoint, overrides.data_class, data_overrides(checkpoint, overrides))
    recorder = DecisionRecorder(args.explainers, args.decisions, args.steps, args.all_decisions, args.ic_rtol,
                                progress=not args.no_progress)
    device = torch.device(args.device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=[device.index or 0] if device.type == "cuda"
        else 1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[recorder],
    )
    evaluate = trainer.test if args.stage == "test" else trainer.validate
    try:
        evaluate(model, datamodule=datamodule, verbose=False)
    except _Enough:
        pass
    if not recorder.ids:
        raise ValueError(f"the {args.stage} split gave no decision to explain ({recorder.seen} made, none correct)")
    description = (f"{type(model).__name__} from {args.ckpt_path}; {len(recorder.ids)} "
                   f"{'decisions' if args.all_decisions else 'correctly classified decisions'} of the {args.stage} "
                   f"split (of {recorder.seen} made in the batches used); device {device}")
    return recorder.finished(), recorder, description


def main(argv: list[str] | None = None) -> int:
    quiet_lightning()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, overrides = parse_tool_args(parser, argv)
    overrides.data_class = args.data_class or overrides.data_class
    for name in ("decisions", "steps", "resamples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence must be in (0, 1), got {args.confidence}")
    if not Path(args.ckpt_path).is_file():
        parser.error(f"checkpoint not found: {args.ckpt_path}")
    try:
        results, recorder, description = run(args, overrides)
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))
    if len(recorder.ids) < args.decisions:
        print(f"fam-benchmark: only {len(recorder.ids)} of the {args.decisions} requested decisions were available "
              f"in the {args.stage} split (raise its size, e.g. --data.test_episodes)", file=sys.stderr)
    rows = summarize(results, recorder.ids, args.confidence, args.resamples, args.seed)
    command = "fam-benchmark " + " ".join(shlex.quote(a) for a in argv)
    header = (f"`{command}`\n\n{description}; {args.resamples} bootstrap resamples, seed {args.seed}; deletion / "
              f"insertion: raw decision score, {args.steps} steps, mean-colour baseline; {torch.get_num_threads()} "
              f"CPU threads.")
    paths = write_outputs(Path(args.out), results, recorder.ids, rows, header, args.steps, args.confidence,
                          args.seed)
    print(markdown_tables(rows, header))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
