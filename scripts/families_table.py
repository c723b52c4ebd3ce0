"""One Markdown table of training runs, read from their TensorBoard event files.

    python scripts/families_table.py CONFIG LOG_DIR WALL_SECONDS [CONFIG LOG_DIR WALL_SECONDS ...]

For each run: the learned metric of its family at the last validation (few-shot accuracy, Recall@1 or kNN
top-1), FAM's energy pointing game at step 0 (the untrained model) and at the last validation, the
uniform-map baseline and the untrained model's energy over all its decisions (the two reference lines),
and the wall time. ``scripts/families_table.sh`` runs every family's synthetic config and calls this.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# (tag, label, chance note) of each family's learned metric, in order of preference
METRICS = (("val/acc", "5-way 1-shot accuracy"), ("val/recall@1", "Recall@1"), ("val/knn_top1", "kNN top-1"))
ENERGY, UNIFORM, UNTRAINED = "val/fam_energy_pointing_game", "val/fam_energy_uniform_baseline", "val/fam_energy_untrained"


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in the event files under ``log_dir`` (step order)."""
    files = sorted(Path(log_dir).glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file (events.out.tfevents.*) in {log_dir}")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}


def run_row(config: str, log_dir: str | Path, seconds: float) -> dict[str, object]:
    """The table's figures of one run (NaN where a tag was never logged)."""
    scalars = read_scalars(log_dir)
    last = lambda tag: scalars[tag][-1][1] if scalars.get(tag) else math.nan  # noqa: E731
    tag, label = next(((t, l) for t, l in METRICS if t in scalars), (METRICS[0][0], "metric"))
    energy = scalars.get(ENERGY, [])
    step0 = next((v for s, v in energy if s == 0), math.nan)
    return {
        "config": config, "metric": label, "value": last(tag), "energy_step0": step0, "energy_last": last(ENERGY),
        "uniform": last(UNIFORM), "untrained": last(UNTRAINED), "seconds": seconds, "log_dir": str(log_dir),
    }


def markdown(rows: list[dict[str, object]]) -> str:
    """The rows as one Markdown table (figures in percent, wall time in min:s)."""
    lines = [
        "| config | learned metric (%) | FAM energy, step 0 (%) | FAM energy, last validation (%) "
        "| gain over step 0 (points) | uniform map (%) | untrained model, all decisions (%) | last / uniform "
        "| wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["energy_last"] / r["uniform"] if r["uniform"] else math.nan
        minutes, secs = divmod(round(float(r["seconds"])), 60)
        lines.append(
            f"| `{r['config']}` | {r['metric']} {r['value']:.1f} | {r['energy_step0']:.1f} | {r['energy_last']:.1f} "
            f"| {r['energy_last'] - r['energy_step0']:+.1f} | {r['uniform']:.1f} | {r['untrained']:.1f} | {ratio:.2f}x | {minutes} min {secs:02d} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="CONFIG LOG_DIR WALL_SECONDS triples")
    args = parser.parse_args()
    if len(args.runs) % 3:
        parser.error(f"expected CONFIG LOG_DIR WALL_SECONDS triples, got {len(args.runs)} values")
    triples = zip(args.runs[0::3], args.runs[1::3], args.runs[2::3])
    print(markdown([run_row(config, log_dir, float(seconds)) for config, log_dir, seconds in triples]), end="")


if __name__ == "__main__":
    main()
