"""Explainers: one short file per method over :class:`Explainer`."""

from fam_lightning.explainers.base import Explainer
from fam_lightning.explainers.feature_activation import FAMExplainer

EXPLAINERS: dict[str, type[Explainer]] = {FAMExplainer.name: FAMExplainer}

__all__ = ["EXPLAINERS", "Explainer", "FAMExplainer"]
