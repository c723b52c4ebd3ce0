"""Result tables in the layout of the FAM paper's tables (CSV + Markdown, written atomically), one per family.

Few-shot: accuracy +- 95% CI (Tables I-II); memory bank: kNN top-1 / top-5;
retrieval: Recall@K and MAP@R; each followed by the FAM metrics. The family
of a row is read from the metrics it has; one table holds one family.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fam_lightning.io import atomic_write

# (metric key logged by the model / FAM callback, column header)
FAM_COLUMNS = (
    ("test/fam_energy_pointing_game", "Proportion (%)"),
    ("test/fam_iou", "IoU (%)"),
    ("test/fam_average_drop", "Average Drop (%)"),
    ("test/fam_increase_in_confidence", "Increase in Confidence (%)"),
    ("test/fam_energy_uniform_baseline", "Uniform-map proportion (%)"),
)
FEWSHOT_COLUMNS = (("test/acc", "Accuracy (%)"), ("test/acc_ci95", "95% CI"), *FAM_COLUMNS)
MEMORY_BANK_COLUMNS = (("test/knn_top1", "kNN top-1 (%)"), ("test/knn_top5", "kNN top-5 (%)"), *FAM_COLUMNS)
RETRIEVAL_COLUMNS = (
    *((f"test/recall@{k}", f"R@{k} (%)") for k in (1, 2, 4, 8)),
    ("test/map@r", "MAP@R (%)"),
    *FAM_COLUMNS,
)
# family -> its columns; a family is recognised by its first column's metric
TABLES = {"few-shot": FEWSHOT_COLUMNS, "memory bank": MEMORY_BANK_COLUMNS, "retrieval": RETRIEVAL_COLUMNS}


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """Rows of an existing table (empty when the file does not exist)."""
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def table_columns(metrics: dict[str, float]) -> tuple[tuple[str, str], ...]:
    """The columns of the family whose headline metric is in ``metrics``."""
    for columns in TABLES.values():
        if columns[0][0] in metrics:
            return columns
    headline = ", ".join(f"{columns[0][0]} ({family})" for family, columns in TABLES.items())
    raise KeyError(f"the metrics hold none of {headline}; got {sorted(metrics)}")


def upsert_row(rows: list[dict[str, str]], model: str, metrics: dict[str, float], note: str = "") -> list[dict[str, str]]:
    """Replace the row of ``model`` (or append it) with formatted metric values."""
    columns = table_columns(metrics)
    missing = [key for key, _ in columns if key not in metrics]
    if missing:
        raise KeyError(f"metrics for {model!r} lack {missing}; is the FAMCallback in the config?")
    row = {"Model": model, **{header: f"{metrics[key]:.2f}" for key, header in columns}, "Note": note}
    if rows and list(rows[0]) != list(row):
        raise ValueError(
            f"the table's columns {list(rows[0])} are another family's than {model!r}'s {list(row)}: "
            "write it to another --table"
        )
    return [r for r in rows if r["Model"] != model] + [row]


def to_markdown(rows: list[dict[str, str]]) -> str:
    """One Markdown table (few-shot accuracy as ``mean ± CI``), then the FAM metrics."""
    if not rows:
        return ""
    metric_headers = [h for h in rows[0] if h not in ("Model", "Note")]
    with_ci = "95% CI" in metric_headers
    if with_ci:
        metric_headers = [h for h in metric_headers if h not in ("Accuracy (%)", "95% CI")]
    headers = ["Model", *(["Accuracy (%)"] if with_ci else []), *metric_headers, "Note"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        accuracy = [f"{row['Accuracy (%)']} ± {row['95% CI']}"] if with_ci else []
        cells = [row["Model"], *accuracy, *[row[h] for h in metric_headers], row.get("Note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, str]], stem: Path) -> tuple[Path, Path]:
    """Write ``stem.csv`` and ``stem.md`` atomically; return their paths."""
    if not rows:
        raise ValueError("no rows to write")
    stem.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    _atomic_write(csv_path, buffer.getvalue())
    _atomic_write(md_path, to_markdown(rows))
    return csv_path, md_path


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, newline=""))
