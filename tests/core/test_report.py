"""Paper-style result tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from fam_lightning.report import FEWSHOT_COLUMNS, read_rows, upsert_row, write_tables


def _metrics(acc: float) -> dict[str, float]:
    return {key: acc + i for i, (key, _) in enumerate(FEWSHOT_COLUMNS)}


def test_rows_are_upserted_and_written_as_csv_and_markdown(tmp_path: Path) -> None:
    stem = tmp_path / "results" / "table"
    rows = upsert_row([], "Conv4", _metrics(50.0), "synthetic")
    rows = upsert_row(rows, "ResNet12", _metrics(60.0))
    rows = upsert_row(rows, "Conv4", _metrics(55.0), "synthetic")  # re-run replaces its row
    csv_path, md_path = write_tables(rows, stem)
    back = read_rows(csv_path)
    assert [r["Model"] for r in back] == ["ResNet12", "Conv4"]
    assert back[1]["Accuracy (%)"] == "55.00" and back[1]["95% CI"] == "56.00"
    md = md_path.read_text().splitlines()
    assert md[0].startswith("| Model | Accuracy (%) | Proportion (%) | IoU (%)")
    assert md[3].startswith("| Conv4 | 55.00 ± 56.00 | 57.00 | 58.00")
    assert not list(stem.parent.glob("*.tmp"))


def test_missing_fam_metrics_are_named() -> None:
    with pytest.raises(KeyError, match="test/fam_iou"):
        upsert_row([], "Conv4", {"test/acc": 1.0, "test/acc_ci95": 0.1})
