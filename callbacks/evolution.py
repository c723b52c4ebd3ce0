"""Evolution at a glance: what :class:`FAMCallback` draws at the end of ``fit``.

- a **filmstrip per probe**: the probe image, then its map (the first
  explainer's) at every logged validation, step 0 (the untrained model)
  first, side by side, each labelled with the step, the prediction and the
  decision's similarity, framed green / red;
- a **plot of each explainer's energy** over the validations, with the
  uniform-map line (chance) and the untrained model's energy.

Both go to the run folder (``<log_dir>/fam_evolution/``) and to TensorBoard
(``val/fam_filmstrip_probe<k>``, ``val/fam_energy_over_training``).
:class:`EvolutionRecord` keeps, per logged validation, the probe maps at tile
size and the energies on the host (one copy per validation, not per step);
the drawing is :func:`fam_lightning.visualize.filmstrip` and
:func:`fam_lightning.visualize.plots.energy_evolution_figure`. The record lives in
memory: after a resume it starts at the resumed run's first validation.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fam_lightning.visualize import (
    BLACK,
    DARK_GREEN,
    RED,
    YELLOW,
    class_label,
    denormalize,
    draw_boxes,
    filmstrip,
    resize_longer_side,
)

__all__ = ["EvolutionRecord", "class_label"]
ENERGY = "_energy_pointing_game"
UNIFORM_TAG = "val/fam_energy_uniform_baseline"


class EvolutionRecord:
    """Probe maps and energies of every logged validation, kept for the end-of-fit pictures."""

    def __init__(self) -> None:
        self.steps: list[int] = []  # one per recorded probe pass
        self.images: Tensor | None = None  # (P, 3, S, S) the probes at tile size, boxes drawn (first pass)
        self.maps: list[Tensor] = []  # per pass: (P, S, S) float16
        self.decisions: list[tuple[list[Any], list[float], list[bool]]] = []  # per pass: predicted, score, correct
        self.labels: list[Any] | None = None
        self.energy_steps: list[int] = []
        self.energies: list[dict[str, float]] = []

    def record_probes(self, step: int, images: Tensor, boxes: Any, maps: Tensor, scores: Tensor, correct: Tensor,
                      labels: Tensor | None, predictions: Tensor | None, normalization: tuple, tile_size: int,
                      names: list[str] | None = None) -> None:
        """One probe pass: (P, 3, H, W) normalised images, (P, H, W) maps, (P,) scores / verdicts / classes."""
        maps = resize_longer_side(maps.float().unsqueeze(1), tile_size).squeeze(1)
        numbers = [scores.float(), correct.float()]
        numbers += [labels.float(), predictions.float()] if labels is not None and predictions is not None else []
        host = torch.cat([maps.flatten(), *numbers]).cpu()  # the one host copy of the pass
        count = scores.numel()
        maps, rest = host[: maps.numel()].view_as(maps), host[maps.numel():].view(-1, count)
        if self.images is None:
            scale = tile_size / max(images.shape[-2:])
            shown = resize_longer_side(denormalize(images.float(), *normalization), tile_size)
            if boxes is not None:
                scaled = [b * scale for b in boxes] if isinstance(boxes, list) else boxes * scale
                shown = draw_boxes(shown, scaled, color=YELLOW, thickness=max(1, tile_size // 64))
            self.images = shown.cpu()
            self.labels = [class_label(names, v) for v in rest[2].tolist()] if rest.shape[0] > 2 else None
        predicted = [class_label(names, v) for v in rest[3].tolist()] if rest.shape[0] > 3 else [None] * count
        self.steps.append(int(step))
        self.maps.append(maps.half())
        self.decisions.append((predicted, rest[0].tolist(), [bool(v) for v in rest[1].tolist()]))

    def record_energies(self, step: int, values: dict[str, Any]) -> None:
        """The energy tags among one validation's metric values (``val/<explainer>_energy_pointing_game``, uniform)."""
        energies = {tag: float(value) for tag, value in values.items() if tag.endswith(ENERGY) or tag == UNIFORM_TAG}
        if energies:
            self.energy_steps.append(int(step))
            self.energies.append(energies)

    def filmstrips(self, alpha: float = 0.5) -> list[Tensor]:
        """One (3, H, W) filmstrip per probe, one column per recorded validation in step order (step 0 first)."""
        if self.images is None:
            return []
        order = sorted(range(len(self.steps)), key=lambda i: self.steps[i])
        strips = []
        for probe in range(self.images.shape[0]):
            head = [("image", BLACK)] + ([(f"true {self.labels[probe]}", BLACK)] if self.labels else [])
            captions, verdicts = [head], []
            for i in order:
                predicted, scores, correct = self.decisions[i]
                caption = [(f"step {self.steps[i]}", BLACK)]
                if predicted[probe] is not None:
                    caption.append((f"pred {predicted[probe]}", DARK_GREEN if correct[probe] else RED))
                caption.append((f"sim {scores[probe]:.3f}".replace("0.", ".", 1), BLACK))
                captions.append(caption)
                verdicts.append(correct[probe])
            maps = torch.stack([self.maps[i][probe].float() for i in order])
            strips.append(filmstrip(self.images[probe], maps, verdicts, captions, alpha))
        return strips

    def energy_series(self, explainers: list[str]) -> tuple[list[int], dict[str, list[float]], list[float]]:
        """(steps, {explainer: energy at each step}, uniform energy at each step), NaN where not measured."""
        order = sorted(range(len(self.energy_steps)), key=lambda i: self.energy_steps[i])
        steps = [self.energy_steps[i] for i in order]
        series = {name: [self.energies[i].get(f"val/{name}{ENERGY}", math.nan) for i in order] for name in explainers}
        uniform = [self.energies[i].get(UNIFORM_TAG, math.nan) for i in order]
        return steps, series, uniform

    def write(self, folder: Path, experiment: Any, step: int, explainers: list[str], untrained: dict[str, float],
              alpha: float = 0.5) -> list[Path]:
        """Filmstrips and the energy plot as PNGs under ``folder`` and, with ``experiment`` (a SummaryWriter), to TensorBoard."""
        from PIL import Image

        from fam_lightning.io import atomic_write

        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for probe, strip in enumerate(self.filmstrips(alpha)):
            path = folder / f"filmstrip_probe{probe}.png"
            pixels = (strip.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            atomic_write(path, lambda tmp, p=pixels: Image.fromarray(p).save(tmp, format="png"))
            written.append(path)
            if experiment is not None:
                experiment.add_image(f"val/fam_filmstrip_probe{probe}", strip, global_step=step)
        if self.images is not None:
            steps_file = folder / "filmstrip_steps.json"
            text = json.dumps({"steps": sorted(self.steps)})
            atomic_write(steps_file, lambda tmp: tmp.write_text(text))
            written.append(steps_file)
        steps, series, uniform = self.energy_series(explainers)
        try:  # a dependency since issue 19; an older environment still gets its filmstrips
            from fam_lightning.visualize.plots import energy_evolution_figure, figure_array, save_figure
        except ImportError as err:
            warnings.warn(f"FAMCallback: no energy plot at the end of fit ({err}); pip install matplotlib")
            return written
        if steps:
            lines = {name: untrained[f"val/{name}_energy_untrained"] for name in explainers
                     if f"val/{name}_energy_untrained" in untrained}
            figure = energy_evolution_figure(steps, series, uniform, lines)
            written.append(save_figure(figure, folder / "energy.png"))
            if experiment is not None:
                experiment.add_image("val/fam_energy_over_training", figure_array(figure), global_step=step,
                                     dataformats="HWC")
        return written

