"""Result tables in the layout of the FAM paper's Tables I-II (CSV + Markdown, written atomically)."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# (metric key logged by the model / FAM callback, column header)
FEWSHOT_COLUMNS = (
    ("test/acc", "Accuracy (%)"),
    ("test/acc_ci95", "95% CI"),
    ("test/fam_energy_pointing_game", "Proportion (%)"),
    ("test/fam_iou", "IoU (%)"),
    ("test/fam_average_drop", "Average Drop (%)"),
    ("test/fam_increase_in_confidence", "Increase in Confidence (%)"),
    ("test/fam_energy_uniform_baseline", "Uniform-map proportion (%)"),
)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """Rows of an existing table (empty when the file does not exist)."""
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def upsert_row(rows: list[dict[str, str]], model: str, metrics: dict[str, float], note: str = "") -> list[dict[str, str]]:
    """Replace the row of ``model`` (or append it) with formatted metric values."""
    missing = [key for key, _ in FEWSHOT_COLUMNS if key not in metrics]
    if missing:
        raise KeyError(f"metrics for {model!r} lack {missing}; is the FAMCallback in the config?")
    row = {"Model": model, **{header: f"{metrics[key]:.2f}" for key, header in FEWSHOT_COLUMNS}, "Note": note}
    return [r for r in rows if r["Model"] != model] + [row]


def to_markdown(rows: list[dict[str, str]]) -> str:
    """One Markdown table: accuracy as ``mean ± CI``, then the FAM metrics."""
    metric_headers = [header for _, header in FEWSHOT_COLUMNS[2:]]
    headers = ["Model", "Accuracy (%)", *metric_headers, "Note"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        accuracy = f"{row['Accuracy (%)']} ± {row['95% CI']}"
        cells = [row["Model"], accuracy, *[row[h] for h in metric_headers], row.get("Note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, str]], stem: Path) -> tuple[Path, Path]:
    """Write ``stem.csv`` and ``stem.md`` atomically; return their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["Model", *[h for _, h in FEWSHOT_COLUMNS], "Note"])
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    _atomic_write(csv_path, buffer.getvalue())
    _atomic_write(md_path, to_markdown(rows))
    return csv_path, md_path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then ``os.replace`` it: never a partial file.

    The file gets the permissions of a plain ``open`` (0666 less the umask), not mkstemp's private 0600.
    """
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, newline=""))
