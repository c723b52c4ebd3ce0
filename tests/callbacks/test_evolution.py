"""Evolution at a glance: filmstrips per probe and the energy plot, written at the end of fit."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from fam_lightning.callbacks.evolution import EvolutionRecord
from fam_lightning.datamodules import FewShotDataModule
from fam_lightning.explainers import FAMExplainer
from fam_lightning.models import FewShotClassifier
from fam_lightning.visualize import filmstrip, jet, resize_longer_side
from tests.callbacks.test_fam_callback_fit import TINY, fit

TILE, PADDING = 128, 4  # FAMCallback's default tile size and the padding that goes with it (size // 32)


def _event_images(log_dir: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """{tag: [(step, (H, W, 3) uint8)]} of every image in the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [(e.step, np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")))
                  for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def _column(strip: np.ndarray, column: int) -> np.ndarray:
    """Tile ``column`` of a filmstrip, without its frame, as floats in [0, 1]."""
    y0, x0, frame = strip.shape[0] - PADDING - TILE, PADDING + column * (TILE + PADDING), PADDING
    return strip[y0 + frame:y0 + TILE - frame, x0 + frame:x0 + TILE - frame].astype(np.float64) / 255


def _probe_map(model: FewShotClassifier, datamodule: FewShotDataModule) -> torch.Tensor:
    """The first probe's FAM map at tile size, (S, S), as the callback explains it."""
    with torch.no_grad():
        inputs = model.eval().explanation_inputs(datamodule.probe_episode())
        maps = FAMExplainer(model)(inputs.images[:1], inputs.references[:1], feature_maps=inputs.feature_maps[:1])
    return resize_longer_side(maps.unsqueeze(1), TILE)[0, 0]


@pytest.mark.slow
def test_filmstrip_has_one_column_per_logged_validation_step_zero_first(tmp_path: Path, data_dir: Path) -> None:
    # the untrained model fit() starts from: same seed, same construction order
    L.seed_everything(0, verbose=False)
    datamodule = FewShotDataModule(data_dir=str(data_dir), **TINY)
    untrained = FewShotClassifier(backbone="conv4", num_classes=12)
    trainer, model, _ = fit(data_dir, tmp_path, epochs=2, name="evolution")
    log_dir = Path(trainer.logger.log_dir)
    images = _event_images(log_dir)
    grid_steps = sorted({step for step, _ in images["val/fam_probe"]})
    assert grid_steps[0] == 0 and len(grid_steps) == 3  # step 0, epochs 0 and 1

    strips = [tag for tag in images if tag.startswith("val/fam_filmstrip_probe")]
    assert len(strips) == 4  # one per probe (num_probe_images=4)
    (_, strip), = images["val/fam_filmstrip_probe0"]
    # the image, then one column per logged validation
    assert strip.shape[1] == PADDING + (1 + len(grid_steps)) * (TILE + PADDING)
    assert json.loads((log_dir / "fam_evolution" / "filmstrip_steps.json").read_text())["steps"] == grid_steps
    assert (log_dir / "fam_evolution" / "filmstrip_probe0.png").is_file()

    # column 1 is the untrained model's map, the last column the trained one's: overlay(image, map)
    datamodule.setup("fit")
    image = torch.from_numpy(_column(strip, 0)).permute(2, 0, 1)
    inner = slice(PADDING, TILE - PADDING)
    expected = {
        name: (0.5 * image + 0.5 * jet(_probe_map(net, datamodule)[None, inner, inner].double())[0]).clamp(0, 1)
        for name, net in (("untrained", untrained), ("trained", model))
    }
    first = torch.from_numpy(_column(strip, 1)).permute(2, 0, 1)
    last = torch.from_numpy(_column(strip, len(grid_steps))).permute(2, 0, 1)
    assert (first - expected["untrained"]).abs().mean() < 0.01
    assert (last - expected["trained"]).abs().mean() < 0.01
    assert (expected["untrained"] - expected["trained"]).abs().mean() > 0.01  # the test tells them apart

    # the energy plot: in the run folder and in TensorBoard
    assert (log_dir / "fam_evolution" / "energy.png").is_file()
    assert "val/fam_energy_over_training" in images


def test_energy_series_in_step_order_with_gaps_as_nan() -> None:
    record = EvolutionRecord()
    record.record_energies(140, {"val/fam_energy_pointing_game": torch.tensor(21.0),
                                 "val/fam_energy_uniform_baseline": torch.tensor(9.5), "val/fam_iou": 3.0})
    record.record_energies(0, {"val/fam_energy_pointing_game": 12.0, "val/gradcam_energy_pointing_game": 11.0,
                               "val/fam_energy_uniform_baseline": 9.8})
    record.record_energies(70, {"val/acc": 40.0})  # no energy measured at this validation: nothing kept
    steps, series, uniform = record.energy_series(["fam", "gradcam"])
    assert steps == [0, 140]
    assert series["fam"] == [12.0, 21.0] and series["gradcam"][0] == 11.0 and math.isnan(series["gradcam"][1])
    assert uniform == [9.8, 9.5]


def test_filmstrip_checks_its_inputs() -> None:
    image, maps = torch.rand(3, 16, 16), torch.rand(2, 16, 16)
    captions = [[("image", (0, 0, 0))], [("step 0", (0, 0, 0))], [("step 9", (0, 0, 0))]]
    strip = filmstrip(image, maps, [True, False], captions)
    assert strip.shape[0] == 3 and strip.shape[2] == 2 + 3 * (16 + 2)
    with pytest.raises(ValueError, match="2 maps need as many verdicts and 3 captions"):
        filmstrip(image, maps, [True], captions)
    with pytest.raises(ValueError, match=r"\(3, S, S\) image and \(T, S, S\) maps"):
        filmstrip(image, torch.rand(2, 8, 8), [True, False], captions)
