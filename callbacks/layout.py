"""The TensorBoard custom-scalars layout :class:`fam_lightning.callbacks.FAMCallback` writes once per run."""

from __future__ import annotations

import re


def scalars_layout(explainers: list[str], faithfulness: bool) -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout: each explainer's energy on one chart with its two baselines."""
    def exact(*tags: str) -> list[str]:
        return [f"^{re.escape(tag)}$" for tag in tags]

    energy = {
        f"{name} energy vs uniform map and untrained model": ["Multiline", exact(
            f"val/{name}_energy_pointing_game", f"val/{name}_energy_uniform_baseline", f"val/{name}_energy_untrained")]
        for name in explainers
    }
    quality = {"accuracy (few-shot / kNN / retrieval)": ["Multiline", exact(
        "val/acc", "val/knn_top1", "val/knn_top5", "val/recall@1", "val/map@r")]}
    more = {f"{name} IoU": ["Multiline", exact(f"val/{name}_iou")] for name in explainers}
    if faithfulness:
        more.update({f"{name} Average Drop / Increase in Confidence": ["Multiline", exact(
            f"val/{name}_average_drop", f"val/{name}_increase_in_confidence")] for name in explainers})
    return {"1. FAM energy and its baselines": energy, "2. Decisions": quality, "3. Localisation and faithfulness": more}
