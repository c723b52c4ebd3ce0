"""What the probe grid writes: class names, kNN vote shares, text that fits; the custom-scalars layout."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from fam_lightning.callbacks.fam import class_names, scalars_layout
from fam_lightning.visualize import fit_width, vote_shares
from fam_lightning.visualize.primitives import _font


def test_vote_shares_are_of_the_predicted_class_strongest_first() -> None:
    weights = torch.tensor([[0.0, 2.0, 1.0, 0.0, 1.0], [3.0, 0.0, 0.0, 1.0, 0.0]])
    shares = vote_shares(weights, 3)
    assert torch.allclose(shares, torch.tensor([[0.5, 0.25, 0.25], [0.75, 0.25, 0.0]]))


def test_class_names_prefer_display_names_through_wrapping_data_sets() -> None:
    split = SimpleNamespace(classes=["n01", "n02"], class_names=["cat", "dog"])
    episodes = SimpleNamespace(dataset=split)
    trainer = SimpleNamespace(val_dataloaders=[SimpleNamespace(dataset=episodes)], test_dataloaders=None)
    assert class_names(trainer, "val") == ["cat", "dog"]
    assert class_names(trainer, "test") is None
    assert class_names(SimpleNamespace(), "val") is None


def test_fit_width_cuts_with_an_ellipsis_to_the_width() -> None:
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert fit_width("true 3", 500, 20) == "true 3"
    cut = fit_width("true a_very_long_class_name_indeed", 80, 20)
    assert cut.endswith("…") and len(cut) < 34
    assert draw.textlength(cut, font=_font(20)) <= 80


def test_scalars_layout_puts_each_energy_with_its_two_baselines() -> None:
    layout = scalars_layout(["fam", "gradcam"], faithfulness=True)
    energy = layout["1. FAM energy and its baselines"]
    assert len(energy) == 2
    kind, patterns = energy["gradcam energy vs uniform map and untrained model"]
    assert kind == "Multiline"
    tags = ["val/gradcam_energy_pointing_game", "val/gradcam_energy_uniform_baseline", "val/gradcam_energy_untrained"]
    assert all(any(re.fullmatch(p, t) for p in patterns) for t in tags)
    assert not any(re.fullmatch(p, "val/fam_energy_pointing_game") for p in patterns)
    assert "fam Average Drop / Increase in Confidence" in layout["3. Localisation and faithfulness"]
    assert "fam Average Drop / Increase in Confidence" not in scalars_layout(["fam"], False)["3. Localisation and faithfulness"]


def test_vote_shares_only_for_several_kNN_reference_images(monkeypatch) -> None:
    """The grid gets vote shares for (B, R, 3, H, W) references with weights; none without weights or for one image."""
    from fam_lightning.callbacks import probe
    from fam_lightning.protocol import ExplanationInputs

    seen = []
    monkeypatch.setattr(probe, "decision_grid", lambda *args, **kwargs: seen.append(kwargs["votes"]))
    trainer = SimpleNamespace(datamodule=None)

    def grid(weights, references):
        inputs = ExplanationInputs(
            images=torch.zeros(2, 3, 8, 8), feature_maps=torch.zeros(2, 4, 2, 2), embeddings=torch.zeros(2, 4),
            references=torch.zeros(2, 5, 4), reference_weights=weights, reference_images=references,
            correct=torch.ones(2, dtype=torch.bool),
        )
        probe.grid_of(trainer, "val", inputs, {"fam": torch.zeros(2, 8, 8)}, None, torch.zeros(2), 8, 0.5)
        return seen[-1]

    weights = torch.tensor([[0.0, 2.0, 1.0, 0.0, 1.0], [3.0, 0.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(grid(weights, torch.zeros(2, 3, 3, 8, 8)), vote_shares(weights, 3))
    assert grid(None, torch.zeros(2, 3, 3, 8, 8)) is None
    assert grid(weights, torch.zeros(2, 3, 8, 8)) is None  # one reference image per decision (few-shot, retrieval)
