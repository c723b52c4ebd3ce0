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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor, nn

from fam_lightning import fam

POOLINGS = ("gap", "gmp", "lse")
SIMILARITIES = ("cosine", "euclidean", "dot")


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
            (B, C, h, w) (pytorch-grad-cam's ``reshape_transform``, e.g. for
            token grids); applied after the feature extractor too.
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
        lse_r: float = 10.0,
    ) -> None:
        super().__init__()
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
        self.lse_r = lse_r

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
        if not isinstance(features, Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"the feature maps must be (B, C, h, w), got {shape}; pick a convolutional layer or "
                "pass reshape_transform"
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
