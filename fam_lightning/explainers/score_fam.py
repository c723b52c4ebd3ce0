"""Score-FAM (Wu et al., CVPR 2022, paper 001): Score-CAM of the feature vector itself, no reference.

The score of channel ``k`` is how much of the embedding survives masking the
input with the upsampled, min-max normalised channel ``H_k``: the cosine
similarity ``cos(z(X * H_k), z(X))`` between the masked image's embedding and
the image's own. As in Score-CAM, ``w = softmax_k`` of the scores and
``map = relu(sum_k w_k A_k)``. (Our copy of paper 001 is the abstract only;
cosine, the softmax and the masking follow Score-CAM, on which the paper
builds.) References are ignored.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fam_lightning.explainers.base import at_least_float32
from fam_lightning.explainers.scorecam import ScoreCAM, Scorer


class ScoreFAM(ScoreCAM):
    """Reference-free Score-FAM: masked-image embeddings scored against the image's own."""

    name = "score_fam"
    needs_references = False

    def scorer(self, feature_maps: Tensor, references: Tensor | None, reference_weights: Tensor | None) -> Scorer:
        own = at_least_float32(self.model.embed(feature_maps))  # (B, D)

        def score(embeddings: Tensor, sample: Tensor) -> Tensor:
            return F.cosine_similarity(embeddings, own[sample], dim=1)

        return score
