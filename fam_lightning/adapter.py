"""FAM for any embedding model: wrap an ``nn.Module`` into the SimilarityModel protocol.

Give either a feature extractor (a module returning (B, C, h, w)) or a target
layer of the model, as pytorch-grad-cam's users know it: its output is
captured with a forward hook (the rest of the model is not run). Add the
pooling, an optional head and the similarity the model decides with, and
every explainer works on it::

    import torchvision
    from fam_lightning.adapter import SimilarityAdapter
    from fam_lightning.explainers import FAMExplainer

    net = torchvision.models.resnet50()
    net.fc = torch.nn.Linear(2048, 128)
    net.load_state_dict(torch.load("my_embedding_model.pth", weights_only=True))
    model = SimilarityAdapter(net, target_layer="layer4", pooling="gap", projection=net.fc,
                              similarity="cosine").eval()
    maps = FAMExplainer(model)(images, model(reference_images).unsqueeze(1))  # (B, H, W) in [0, 1]

A transformer's tokens become the grid through ``token_grid`` (no hand-written
``reshape_transform``; the grid follows the actual input size), and a timm
model's own pooled head through :meth:`SimilarityAdapter.from_timm`::

    from fam_lightning.backbones.tokens import TokenGrid

    model = SimilarityAdapter(vit, target_layer="norm", pooling="gap",
                              token_grid=TokenGrid(patch_size=16, num_prefix_tokens=1))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor, nn

from fam_lightning import fam
from fam_lightning.backbones.tokens import TokenGrid
from fam_lightning.similarity import SIMILARITIES

POOLINGS = ("gap", "gmp", "lse")


class _Captured(Exception):
    """Raised by the target layer's hook: its output is all that is needed."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


class SimilarityAdapter(nn.Module):
    """A :class:`~fam_lightning.protocol.SimilarityModel` around a user's own model.

    ``forward_features(x)`` is ``feature_extractor(x)``, or the output of
    ``target_layer`` while ``model(x)`` runs (captured by a forward hook; the
    layers after it are skipped). ``embed(A)`` pools, then applies
    ``projection``; ``forward(x)`` is both.

    Args:
        model: the user's model (needed with ``target_layer``).
        feature_extractor: a module mapping (B, 3, H, W) to (B, C, h, w);
            alternative to ``model`` + ``target_layer``.
        target_layer: a submodule of ``model`` (or its dotted name, e.g.
            ``"layer4"``) whose output are the feature maps.
        pooling: "gap" | "gmp" | "lse": how the model pools the feature maps.
        projection: None, or the head mapping pooled (B, C) to the (B, D)
            embedding (an ``nn.Linear``, or any module: FAM linearises it).
        similarity: "cosine" | "euclidean" | "dot": how embeddings are compared.
        reshape_transform: optional callable turning the captured output into
            (B, C, h, w) (pytorch-grad-cam's ``reshape_transform``); applied
            after the feature extractor too.
        token_grid: for transformers, how the output's tokens lie on the
            patch grid (:class:`~fam_lightning.backbones.tokens.TokenGrid`:
            patch size, prefix tokens, channels-last); the grid is computed
            from each input's size. Alternative to ``reshape_transform``.
        lse_r: sharpness of LSE pooling.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        feature_extractor: nn.Module | None = None,
        target_layer: nn.Module | str | None = None,
        pooling: Literal["gap", "gmp", "lse"] = "gap",
        projection: nn.Module | None = None,
        similarity: Literal["cosine", "euclidean", "dot"] = "cosine",
        reshape_transform: Callable[[Any], Tensor] | None = None,
        token_grid: TokenGrid | None = None,
        lse_r: float = 10.0,
    ) -> None:
        super().__init__()
        if reshape_transform is not None and token_grid is not None:
            raise ValueError("SimilarityAdapter takes reshape_transform or token_grid, not both")
        if (feature_extractor is None) == (target_layer is None):
            raise ValueError("SimilarityAdapter needs exactly one of feature_extractor and target_layer")
        if target_layer is not None and model is None:
            raise ValueError("SimilarityAdapter(target_layer=...) needs the model the layer belongs to")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        self.model = model
        self.feature_extractor = feature_extractor
        self.target_layer: nn.Module | None = None
        if target_layer is not None:
            self.target_layer = self._resolve(model, target_layer)
        self.pooling = pooling
        self.projection = projection
        self.similarity = similarity
        self.reshape_transform = reshape_transform
        self.token_grid = token_grid
        self.lse_r = lse_r

    @classmethod
    def from_timm(
        cls, backbone: nn.Module | str, similarity: Literal["cosine", "euclidean", "dot"] = "cosine", **kwargs: Any
    ) -> SimilarityAdapter:
        """A timm model's own embedding (``forward_head(pre_logits=True)``) as the protocol.

        Args:
            backbone: a :class:`~fam_lightning.backbones.external.TimmBackbone`, a
                timm model, or a ``timm:<name>`` (built without weights; ``kwargs``:
                ``pretrained_path`` and the factory's arguments).
            similarity: how embeddings are compared.

        The grid is the patch tokens; pooling and projection are the model's
        (GAP / GMP, then ``fc_norm`` / ConvNeXt's head norm, held fixed per
        sample by FAM: exact, its bias's share the residual). Class-token and
        attention-pooled heads are refused by name.
        """
        from fam_lightning.backbones.external import TimmBackbone, create_external_backbone

        if isinstance(backbone, str):
            name = backbone if backbone.startswith("timm:") else f"timm:{backbone}"
            backbone = create_external_backbone(name, **kwargs)
        elif kwargs:
            raise ValueError("SimilarityAdapter.from_timm takes factory arguments only with a model name")
        if not isinstance(backbone, TimmBackbone):
            model = backbone
            model.reset_classifier(0)
            backbone = TimmBackbone(model, int(model.num_features), f"timm:{type(model).__name__}")
        pooling, projection = backbone.pooled_head()
        return cls(feature_extractor=backbone, pooling=pooling, projection=projection, similarity=similarity)

    @staticmethod
    def _resolve(model: nn.Module, layer: nn.Module | str) -> nn.Module:
        if isinstance(layer, str):
            try:
                return model.get_submodule(layer)
            except AttributeError:
                names = [name for name, _ in model.named_children()]
                raise ValueError(
                    f"target_layer {layer!r} is not a submodule of {type(model).__name__} "
                    f"(its children: {', '.join(names)})"
                ) from None
        if not any(module is layer for module in model.modules()):
            raise ValueError(f"target_layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
        return layer

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w) feature maps."""
        if self.feature_extractor is not None:
            features = self.feature_extractor(x)
        else:
            features = self._capture(x)
        if self.reshape_transform is not None:
            features = self.reshape_transform(features)
        elif self.token_grid is not None:
            features = self.token_grid(features, (int(x.shape[-2]), int(x.shape[-1])))
        if not isinstance(features, Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"the feature maps must be (B, C, h, w), got {shape}; pick a convolutional layer or "
                "pass token_grid (transformers) or reshape_transform"
            )
        return features

    def _capture(self, x: Tensor) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            raise _Captured(output)

        handle = self.target_layer.register_forward_hook(hook)
        try:
            self.model(x)
        except _Captured as captured:
            return captured.output
        finally:
            handle.remove()
        raise RuntimeError(f"target_layer {type(self.target_layer).__name__} did not run in model(x)")

    def embed(self, feature_maps: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, D): pooling, then the projection head."""
        return fam.embed(fam.pool(feature_maps, self.pooling, self.lse_r), self.projection)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) embeddings."""
        return self.embed(self.forward_features(x))
