"""Explainers: one short file per method over :class:`Explainer`, registered by short name.

Every explainer maps a batch of images (and, unless ``needs_references`` is
False, the reference embeddings of their decisions) to (B, H, W) maps in [0, 1].
"""

from fam_lightning.explainers.ablationcam import AblationCAM
from fam_lightning.explainers.base import Explainer, Passes
from fam_lightning.explainers.cfcam import CFCAM
from fam_lightning.explainers.eigencam import EigenCAM
from fam_lightning.explainers.feature_activation import FAMExplainer
from fam_lightning.explainers.grad_fam import GradFAM
from fam_lightning.explainers.gradcam import GradCAM
from fam_lightning.explainers.gradcampp import GradCAMPlusPlus
from fam_lightning.explainers.score_fam import ScoreFAM
from fam_lightning.explainers.scorecam import ScoreCAM
from fam_lightning.explainers.xgradcam import XGradCAM

EXPLAINERS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (
        FAMExplainer,
        GradFAM,
        ScoreFAM,
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        ScoreCAM,
        AblationCAM,
        EigenCAM,
        CFCAM,
    )
}

__all__ = [
    "EXPLAINERS",
    "CFCAM",
    "AblationCAM",
    "EigenCAM",
    "Explainer",
    "FAMExplainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradFAM",
    "Passes",
    "ScoreCAM",
    "ScoreFAM",
    "XGradCAM",
]
