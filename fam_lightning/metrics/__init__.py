"""Evaluation metrics: localisation (eq. 19, 20), faithfulness (eq. 21, 22), few-shot accuracy, retrieval, rank
correlation; :class:`ExplanationMetrics` holds the localisation + faithfulness metrics of every explainer."""

from fam_lightning.metrics.deletion_insertion import DeletionAUC, InsertionAUC, deletion_insertion_auc
from fam_lightning.metrics.faithfulness import (
    AverageDrop,
    IncreaseInConfidence,
    average_drop,
    increase_in_confidence,
)
from fam_lightning.metrics.explanation import ExplanationMetrics, faithfulness_scores
from fam_lightning.metrics.fewshot import EpisodeAccuracy, accuracy_with_ci, episode_accuracy
from fam_lightning.metrics.localization import (
    Boxes,
    EnergyPointingGame,
    LocalizationIoU,
    boxes_to_mask,
    energy_pointing_game,
    largest_connected_component,
    localization_iou,
    pad_boxes,
    saliency_to_box,
)
from fam_lightning.metrics.rank import average_ranks, spearman
from fam_lightning.metrics.retrieval import RecallAtK, map_at_r, recall_at_k

__all__ = [
    "ExplanationMetrics",
    "average_ranks",
    "faithfulness_scores",
    "spearman",
    "DeletionAUC",
    "InsertionAUC",
    "deletion_insertion_auc",
    "RecallAtK",
    "map_at_r",
    "recall_at_k",
    "AverageDrop",
    "Boxes",
    "EnergyPointingGame",
    "EpisodeAccuracy",
    "IncreaseInConfidence",
    "LocalizationIoU",
    "accuracy_with_ci",
    "average_drop",
    "boxes_to_mask",
    "energy_pointing_game",
    "episode_accuracy",
    "increase_in_confidence",
    "largest_connected_component",
    "localization_iou",
    "pad_boxes",
    "saliency_to_box",
]
