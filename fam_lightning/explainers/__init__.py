"""Explainers: one short file per method over :class:`Explainer`, registered by short name.

Every explainer maps a batch of images (and, unless ``needs_references`` is
False, the reference embeddings of their decisions) to (B, H, W) maps in [0, 1].
``EXPLAINERS`` work on any protocol model (CNN feature maps or token grids);
``TOKEN_EXPLAINERS`` (attention rollout, gradient rollout) need a ViT-style
token backbone: :func:`explainers_for` gives the ones a model supports.
"""

from fam_lightning.explainers.ablationcam import AblationCAM
from fam_lightning.explainers.base import Explainer, Passes
from fam_lightning.explainers.cfcam import CFCAM
from fam_lightning.explainers.eigencam import EigenCAM
from fam_lightning.explainers.feature_activation import FAMExplainer
from fam_lightning.explainers.grad_fam import GradFAM
from fam_lightning.explainers.gradcam import GradCAM
from fam_lightning.explainers.grad_rollout import GradientRollout
from fam_lightning.explainers.gradcampp import GradCAMPlusPlus
from fam_lightning.explainers.rollout import AttentionRollout
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

TOKEN_EXPLAINERS: dict[str, type[Explainer]] = {cls.name: cls for cls in (AttentionRollout, GradientRollout)}


def explainers_for(model: object) -> dict[str, type[Explainer]]:
    """``EXPLAINERS``, plus ``TOKEN_EXPLAINERS`` when ``model`` has a ViT-style token backbone."""
    from fam_lightning.explainers._attention import token_model

    try:
        token_model(model)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError):
        return dict(EXPLAINERS)
    return {**EXPLAINERS, **TOKEN_EXPLAINERS}


__all__ = [
    "EXPLAINERS",
    "TOKEN_EXPLAINERS",
    "AttentionRollout",
    "GradientRollout",
    "explainers_for",
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
