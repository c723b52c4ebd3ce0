"""Explainers: one short file per method over :class:`Explainer`, registered by short name.

Every explainer maps a batch of images (and, unless ``needs_references`` is
False, the reference embeddings of their decisions) to (B, H, W) maps in [0, 1].
``EXPLAINERS`` work on any protocol model (CNN feature maps or token grids);
``TOKEN_EXPLAINERS``: ``token_fam`` (FAM's exact split over positions, for
GAP models: signed token grids) and attention / gradient rollout (ViT-style
token backbones); :func:`explainers_for` gives the ones a model supports.
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
from fam_lightning.explainers.token_fam import TokenFAM
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

# token_fam: any GAP model (signed token grids above all); the rollouts: ViT-style backbones
TOKEN_EXPLAINERS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (TokenFAM, AttentionRollout, GradientRollout)
}


def explainers_for(model: object) -> dict[str, type[Explainer]]:
    """``EXPLAINERS``, plus ``token_fam`` for GAP models and the rollouts for ViT-style token backbones."""
    from fam_lightning.explainers._attention import token_model

    found = dict(EXPLAINERS)
    if getattr(model, "pooling", None) == "gap":
        found[TokenFAM.name] = TokenFAM
    try:
        token_model(model)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError):
        return found
    return {**found, AttentionRollout.name: AttentionRollout, GradientRollout.name: GradientRollout}


__all__ = [
    "EXPLAINERS",
    "TOKEN_EXPLAINERS",
    "AttentionRollout",
    "GradientRollout",
    "explainers_for",
    "TokenFAM",
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
