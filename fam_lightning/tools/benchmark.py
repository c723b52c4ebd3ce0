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
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fam_lightning.console import quiet_lightning
from fam_lightning.callbacks.fam import FAMCallback, _annotated, _round_off_rtol, _select
from fam_lightning.explainers import EXPLAINERS
from fam_lightning.loading import build_datamodule, load_model, read_checkpoint
from fam_lightning.metrics import energy_pointing_game, localization_iou
from fam_lightning.metrics.bootstrap import Interval, bootstrap_band, bootstrap_ci, paired_bootstrap_ci
from fam_lightning.metrics.deletion_insertion import deletion_insertion_curves
from fam_lightning.metrics.faithfulness import average_drop_per_sample, increase_in_confidence_per_sample
from fam_lightning.protocol import ExplanationInputs
from fam_lightning.io import atomic_write
from fam_lightning.tools.common import Overrides, ToolParser, add_checkpoint_arguments, parse_tool_args
from fam_lightning.tools.sanity import data_overrides

UNIFORM = "uniform"
REFERENCE = "fam"


@dataclass(frozen=True)
class Metric:
    """A per-decision metric: its key, the table's column name, and which way is better."""

    key: str
    label: str
    higher_is_better: bool | None
    digits: int


METRICS = (
    Metric("energy", "energy (%)", True, 1),
    Metric("iou", "IoU (%)", True, 1),
    Metric("average_drop", "AD (%)", False, 1),
    Metric("increase_in_confidence", "IC (%)", True, 1),
    Metric("deletion_auc", "deletion AUC", False, 3),
    Metric("insertion_auc", "insertion AUC", True, 3),
    Metric("ms_per_image", "ms / image", None, 2),
)


class UniformMap:
    """A constant map: what a map that knows nothing scores (the chance level of every metric)."""

    def __call__(self, images: Tensor, references: Tensor | None = None, reference_weights: Tensor | None = None,
                 feature_maps: Tensor | None = None) -> Tensor:
        return images.new_ones(images.shape[0], *images.shape[-2:])


class _Enough(Exception):
    """Raised by the recorder once the requested decisions are explained: ends the evaluation loop early."""


@dataclass
class Records:
    """Per-decision values of one explainer, in decision order (lists of per-batch tensors until finished)."""

    values: dict[str, list[Tensor]] = field(default_factory=lambda: {m.key: [] for m in METRICS})
    deletion: list[Tensor] = field(default_factory=list)
    insertion: list[Tensor] = field(default_factory=list)
    nonfinite: list[Tensor] = field(default_factory=list)


class DecisionRecorder(L.Callback):
    """Explains the eval steps' decisions with every explainer and keeps each decision's metrics.

    Args:
        explainers: names (``EXPLAINERS``); the uniform map is added.
        decisions: stop after this many explained decisions.
        steps: deletion / insertion curve steps.
        all_decisions: explain wrong decisions too (default: correct ones only, as the paper).
        ic_rtol: Increase-in-Confidence tolerance (None: float round-off of the embeddings' dtype).
        progress: show a progress bar over the decisions.
    """

    def __init__(self, explainers: Sequence[str], decisions: int, steps: int = 10, all_decisions: bool = False,
                 ic_rtol: float | None = None, progress: bool = True) -> None:
        self.names = [*explainers, UNIFORM]
        self.decisions = decisions
        self.steps = steps
        self.all_decisions = all_decisions
        self.ic_rtol = ic_rtol
        self.progress = progress
        self.ids: list[str] = []
        self.records = {name: Records() for name in self.names}
        self.seen = 0  # decisions the model made (right or wrong) in the batches looked at
        self._explainers: dict[str, Any] = {}
        self._bar: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._explainers = {name: EXPLAINERS[name](pl_module) for name in self.names if name != UNIFORM}
        self._explainers[UNIFORM] = UniformMap()
        self._bar = tqdm(total=self.decisions, desc="decisions explained", unit="decision",
                         disable=not self.progress, dynamic_ncols=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._bar is not None:
            self._bar.close()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(pl_module, outputs, f"test:{dataloader_idx}:{batch_idx}")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(pl_module, outputs, f"val:{dataloader_idx}:{batch_idx}")

    def record(self, pl_module: L.LightningModule, outputs: Any, batch_id: str) -> None:
        """Explain and score one batch's decisions; raises ``_Enough`` when the count is reached."""
        if outputs is None:
            return  # a batch without decisions (a retrieval gallery pass)
        inputs = outputs.get("explain") if isinstance(outputs, dict) else None
        if not isinstance(inputs, ExplanationInputs):
            raise TypeError(f"{type(pl_module).__name__}'s eval step must return {{'explain': ExplanationInputs}} "
                            f"for fam-benchmark, got {type(outputs).__name__}")
        self.seen += inputs.correct.numel()
        rows = torch.arange(inputs.correct.numel()) if self.all_decisions else inputs.correct.cpu().nonzero()[:, 0]
        rows = rows[: self.decisions - len(self.ids)].tolist()  # the one host sync of the batch's bookkeeping
        if rows:
            self._score(pl_module, _select(inputs, torch.tensor(rows, device=inputs.correct.device), rows))
            self.ids += [f"{batch_id}:{row}" for row in rows]
            self._bar.update(len(rows))
        if len(self.ids) >= self.decisions:
            raise _Enough

    def _score(self, pl_module: L.LightningModule, inputs: ExplanationInputs) -> None:
        batch = inputs.images.shape[0]
        boxed, boxes = _annotated(inputs.boxes)
        boxed = torch.arange(batch, device=inputs.images.device) if boxed is None else boxed
        rtol = self.ic_rtol if self.ic_rtol is not None else _round_off_rtol(inputs.embeddings.dtype)
        device = inputs.images.device
        first = not self.ids
        for name in self.names:
            explainer = self._explainers[name]

            def explain() -> Tensor:
                return explainer(inputs.images, inputs.references, inputs.reference_weights,
                                 feature_maps=inputs.feature_maps)

            if first:
                explain()  # warm-up: lazy initialisation and kernel selection stay out of the timing
            _synchronize(device)
            start = time.perf_counter()
            maps = explain()
            _synchronize(device)
            seconds = time.perf_counter() - start
            values = self.records[name].values
            values["ms_per_image"].append(torch.full((batch,), 1e3 * seconds / batch, dtype=torch.float64))
            nan = torch.full((batch,), math.nan, dtype=torch.float64, device=device)
            energy, iou = nan.clone(), nan.clone()
            if boxes is not None:
                energy[boxed] = 100.0 * energy_pointing_game(maps[boxed], boxes).double()
                iou[boxed] = 100.0 * localization_iou(maps[boxed], boxes).double()
            values["energy"].append(energy)
            values["iou"].append(iou)
            y, o = FAMCallback.faithfulness_scores(pl_module, inputs, maps)
            y, o = y.double(), o.double()
            # the metric classes' per-sample twins: Y <= 0 excluded (NaN here, left out of the means)
            values["average_drop"].append(average_drop_per_sample(y, o))
            values["increase_in_confidence"].append(increase_in_confidence_per_sample(y, o, rtol))
            deletion, insertion = deletion_insertion_curves(
                pl_module, inputs.images, maps, inputs.references, inputs.reference_weights, steps=self.steps
            )
            deletion, insertion = deletion.double(), insertion.double()
            values["deletion_auc"].append(torch.trapezoid(deletion, dx=1.0 / self.steps, dim=1))
            values["insertion_auc"].append(torch.trapezoid(insertion, dx=1.0 / self.steps, dim=1))
            record = self.records[name]
            record.deletion.append(deletion)
            record.insertion.append(insertion)
            # a NaN map or score is never dropped as "not scored": it makes the explainer's figures NaN
            record.nonfinite.append(~maps.flatten(1).isfinite().all(1) | ~y.isfinite() | ~o.isfinite())

    def finished(self) -> dict[str, dict[str, np.ndarray]]:
        """``{explainer: {metric: (N,), "deletion_curve": (N, T), "insertion_curve": (N, T), "nonfinite": (N,)}}``."""
        result = {}
        for name, record in self.records.items():
            arrays = {key: _host(parts) for key, parts in record.values.items()}
            arrays["deletion_curve"] = _host(record.deletion)
            arrays["insertion_curve"] = _host(record.insertion)
            arrays["nonfinite"] = _host(record.nonfinite).astype(bool)
            result[name] = arrays
        return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host(parts: list[Tensor]) -> np.ndarray:
    return torch.cat(parts).cpu().numpy() if parts else np.zeros(0)


# -- statistics -------------------------------------------------------------------------------
def _scored(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """Rows a metric scores: finite values (NaN = not scored: no box, Y <= 0), or a real NaN to report."""
    return np.isfinite(arrays[key]) | arrays["nonfinite"]


def summarize(
    results: dict[str, dict[str, np.ndarray]], ids: Sequence[str], confidence: float = 0.95,
    resamples: int = 10_000, seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per explainer and metric: n, mean and interval, and the paired difference to FAM.

    The difference uses the decisions both explainers score (for AD / IC the
    same ``Y > 0`` decisions, for energy / IoU those with boxes: the same rows).
    A non-finite map or score on a scored decision makes that row NaN.
    """
    rows = []
    reference = results.get(REFERENCE)
    ids = np.asarray(ids)
    for name, arrays in results.items():
        for metric in METRICS:
            scored = _scored(arrays, metric.key)
            values = arrays[metric.key][scored]
            row: dict[str, Any] = {"explainer": name, "metric": metric.key, "n": int(scored.sum()),
                                   "nonfinite": int(arrays["nonfinite"][scored].sum())}
            row.update(_interval_fields("", _interval(values, confidence, resamples, seed)))
            if reference is not None and name != REFERENCE:
                both = scored & _scored(reference, metric.key)
                difference = None
                if both.any() and np.isfinite(arrays[metric.key][both]).all() \
                        and np.isfinite(reference[metric.key][both]).all():
                    difference = paired_bootstrap_ci(
                        arrays[metric.key][both], reference[metric.key][both], ids[both], ids[both],
                        confidence=confidence, resamples=resamples, seed=seed,
                    )
                row.update(_interval_fields("diff_to_fam_", difference, nan=both.any()))
            rows.append(row)
    return rows


def _interval(values: np.ndarray, confidence: float, resamples: int, seed: int) -> Interval | None:
    if values.size == 0 or not np.isfinite(values).all():
        return None
    return bootstrap_ci(values, confidence=confidence, resamples=resamples, seed=seed)


def _interval_fields(prefix: str, interval: Interval | None, nan: bool = True) -> dict[str, float | str]:
    if interval is None:
        fill: float | str = math.nan if nan else ""
        return {f"{prefix}mean": fill, f"{prefix}low": fill, f"{prefix}high": fill}
    return {f"{prefix}mean": interval.mean, f"{prefix}low": interval.low, f"{prefix}high": interval.high}


# -- tables -----------------------------------------------------------------------------------
def _cell(row: dict[str, Any], prefix: str, digits: int, signed: bool = False) -> str:
    mean, low, high = (row.get(f"{prefix}{part}", "") for part in ("mean", "low", "high"))
    if mean == "":
        return ""
    if isinstance(mean, float) and math.isnan(mean):
        return "NaN" if row["n"] else "-"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def markdown_tables(rows: list[dict[str, Any]], header: str) -> str:
    """Means with intervals (explainer x metric), then the paired differences to FAM."""
    names = list(dict.fromkeys(row["explainer"] for row in rows))
    by = {(row["explainer"], row["metric"]): row for row in rows}
    columns = " | ".join(m.label + ("" if m.higher_is_better is None else (" higher" if m.higher_is_better
                                                                              else " lower")) for m in METRICS)
    lines = [header, "", "Mean [95 % bootstrap interval] over the explained decisions:", "",
             f"| explainer | n | {columns} |", "|---|---:|" + "---:|" * len(METRICS)]
    for name in names:
        n = by[(name, "energy")]["n"] if by[(name, "energy")]["n"] else by[(name, "average_drop")]["n"]
        cells = " | ".join(_cell(by[(name, m.key)], "", m.digits) for m in METRICS)
        lines.append(f"| {name} | {n} | {cells} |")
    if any("diff_to_fam_mean" in row for row in rows):
        lines += ["", "Paired difference to FAM on the same decisions, explainer - fam [95 % interval] "
                  "(an interval excluding 0: a difference at that level):", "",
                  f"| explainer | {columns} |", "|---|" + "---:|" * len(METRICS)]
        for name in names:
            if name == REFERENCE:
                continue
            cells = " | ".join(_cell(by[(name, m.key)], "diff_to_fam_", m.digits, signed=True) for m in METRICS)
            lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), newline=""))


def decision_rows(results: dict[str, dict[str, np.ndarray]], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every decision's values, one row per (decision, explainer)."""
    rows = []
    for name, arrays in results.items():
        for i, decision in enumerate(ids):
            rows.append({"decision": decision, "explainer": name,
                         **{m.key: float(arrays[m.key][i]) for m in METRICS},
                         "nonfinite": bool(arrays["nonfinite"][i])})
    return rows


def write_outputs(
    out: Path, results: dict[str, dict[str, np.ndarray]], ids: Sequence[str], rows: list[dict[str, Any]],
    header: str, steps: int, confidence: float, seed: int,
) -> list[Path]:
    """summary.csv / .md, decisions.csv and the three plots under ``out``; returns the paths."""
    from fam_lightning import plots  # matplotlib is only needed here

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.csv", out / "summary.md", out / "decisions.csv"]
    _write_csv(paths[0], rows)
    text = markdown_tables(rows, header)
    atomic_write(paths[1], lambda tmp: tmp.write_text(text))
    _write_csv(paths[2], decision_rows(results, ids))
    fractions = np.linspace(0.0, 1.0, steps + 1)
    bands = {}
    for kind in ("deletion", "insertion"):
        bands[kind] = {
            name: bootstrap_band(arrays[f"{kind}_curve"][~arrays["nonfinite"]], confidence=confidence, seed=seed)
            for name, arrays in results.items() if (~arrays["nonfinite"]).any()
        }
    figures = {
        "curves.png": plots.deletion_insertion_figure(fractions, bands["deletion"], bands["insertion"]),
        "metrics.png": plots.metric_intervals_figure(rows, [(m.key, m.label) for m in METRICS[:4]]),
        "differences.png": plots.paired_differences_figure(rows, [(m.key, _direction(m)) for m in METRICS[:6]]),
    }
    for filename, figure in figures.items():
        paths.append(out / filename)
        plots.save_figure(figure, paths[-1])
    return paths


def _direction(metric: Metric) -> str:
    """``energy (%): right of 0 = higher than FAM, better``: how to read a difference panel."""
    better = "right" if metric.higher_is_better else "left"
    return f"{metric.label}\n{better} of 0: better than FAM"


# -- command line -------------------------------------------------------------------------------
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
