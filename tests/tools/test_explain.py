"""explain.py (fam-explain) as a user runs it, on a fresh (untrained) checkpoint written like fam-train's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from fam_lightning.loading import load_model
from fam_lightning.models import FewShotClassifier
from fam_lightning.similarity import mean_similarity
from fam_lightning.tools import explain
from tests.helpers.cli import REPO

MODEL_CLASS = "fam_lightning.models.FewShotClassifier"


def _save_checkpoint(path: Path, with_class: bool) -> Path:
    """The keys fam-train writes that the tools read: state dict, hyper-parameters with class paths, version."""
    torch.manual_seed(0)
    model = FewShotClassifier(num_classes=4)
    hparams = dict(model.hparams)
    data = {"image_size": 40, "synthetic_classes": 24}
    if with_class:
        hparams |= {"_class_path": MODEL_CLASS, "_instantiator": "lightning.pytorch.cli.instantiate_module"}
        data |= {"_class_path": "fam_lightning.datamodules.FewShotDataModule"}
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hparams, "datamodule_hyper_parameters": data,
         "pytorch-lightning_version": lightning.__version__},
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "fresh.ckpt", with_class=True)


@pytest.fixture(scope="module")
def classless_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "classless.ckpt", with_class=False)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = [folder / "bird.png", folder / "query.png", folder / "ref.jpg"]
    for path, (w, h) in zip(paths, [(150, 90), (40, 40), (64, 48)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return paths


def _find_panel(figure: np.ndarray, photo: np.ndarray) -> tuple[int, int] | None:
    """(x, y) where ``photo`` appears pixel for pixel in ``figure``, or None."""
    h, w = photo.shape[:2]
    for y, x in np.argwhere((figure == photo[0, 0]).all(-1)):  # candidates: the first pixel matches
        if y + h <= figure.shape[0] and x + w <= figure.shape[1] and (figure[y:y + h, x:x + w] == photo).all():
            return int(x), int(y)
    return None


@pytest.mark.slow
def test_explain_script_writes_one_figure_per_image_at_the_photo_resolution(
    tmp_path: Path, checkpoint: Path, image_files
) -> None:
    bird, query, ref = image_files
    out = tmp_path / "maps"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "explain.py"), "--ckpt_path", str(checkpoint), "--images", str(bird), str(query),
         "--references", str(ref), "--explainers", "fam", "gradcam", "score_fam", "--out", str(out),
         "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model input 40 x 40" in proc.stdout  # the input size came from the checkpoint's data module
    assert sorted(p.name for p in out.iterdir()) == ["bird.png", "query.png"]  # no temporary files left
    # a 90 px high photo is shown 3x (each pixel a 3 x 3 block): 450 x 270
    photo = np.asarray(Image.open(bird).convert("RGB")).repeat(3, axis=0).repeat(3, axis=1)
    with Image.open(out / "bird.png") as image:
        assert image.mode == "RGB"
        figure = np.asarray(image)
    # photo | fam | gradcam | score_fam side by side, each at the photo's 150 x 90 pixels, enlarged 3x
    assert figure.shape[1] >= 4 * 450 and figure.shape[0] >= 270
    x, y = _find_panel(figure, photo)
    fam_panel = figure[y:y + 270, x + 450 + explain.GAP:x + 2 * 450 + explain.GAP].astype(int)
    assert fam_panel.shape == (270, 450, 3) and np.abs(fam_panel - photo).mean() > 10  # the map is blended in


def test_maps_cover_the_whole_photo_or_only_its_centre_crop(image_files) -> None:
    bird = image_files[0]  # 150 x 90
    whole = explain.read_photo(bird, 30, "resize")
    assert whole.crop == (0, 0, 150, 90) and not whole.cropped
    saliency = torch.zeros(30, 30)
    saliency[:, 15:] = 1.0  # right half of the model's input
    mapped = explain.map_to_photo(saliency, whole)
    assert mapped.shape == (90, 150)
    assert mapped[:, :70].max() < 0.05 and mapped[:, 80:].min() > 0.95  # the right half of the photo

    crop = explain.read_photo(bird, 30, "center_crop")
    assert crop.crop == (30, 0, 120, 90) and crop.cropped  # the centred 90 x 90 square
    mapped = explain.map_to_photo(torch.ones(30, 30), crop)
    assert mapped[:, :30].max() == 0 and mapped[:, 120:].max() == 0 and mapped[:, 30:120].min() == 1
    shown = explain.overlay_on_photo(crop, torch.ones(30, 30))
    torch.testing.assert_close(shown[:, :, :30], crop.pixels[:, :, :30] * 0.35)  # outside the crop: dimmed
    assert any("centre crop (30, 0, 120, 90)" in line for line in explain.figure_header(crop, []))


def test_figure_header_gives_the_decision_score(checkpoint: Path, image_files, tmp_path: Path) -> None:
    model = load_model(checkpoint)
    photo, ref = explain.read_photo(image_files[1], 40), explain.read_photo(image_files[2], 40)
    with torch.no_grad():
        z = model(torch.stack([photo.model_input, ref.model_input]))
    score = float(mean_similarity(z[:1], z[1:].unsqueeze(0), "cosine"))
    decision = explain.reference_decision(model, z[:1], [ref], "Albatross")
    header = explain.figure_header(photo, decision.lines[0], photo.display_scale())
    assert header[0] == "query.png (40 x 40, shown 6x)"  # 40 px: enlarged to >= 224 px for display
    assert header[1] == f"decision score {score:.4f} = mean cosine similarity to the 1 support image of class 'Albatross'"
    assert [label for label, _ in decision.reference_panels[0]] == ["support 1: ref.jpg"]
    written = explain.explain_files(model, [image_files[1]], ["fam"], tmp_path, [image_files[2]], image_size=40)
    assert written == [tmp_path / "query.png"] and (tmp_path / "query.png").stat().st_mode & 0o044  # not 0600


def test_model_class_comes_from_the_checkpoint_or_the_override(
    tmp_path: Path, checkpoint: Path, classless_checkpoint: Path, image_files, capsys
) -> None:
    assert isinstance(load_model(checkpoint), FewShotClassifier)
    args = ["--images", str(image_files[1]), "--explainers", "eigencam", "--out", str(tmp_path), "--device", "cpu"]
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(classless_checkpoint), *args])
    err = capsys.readouterr().err
    assert "does not name its model class" in err and "--model_class" in err
    assert explain.main(["--ckpt_path", str(classless_checkpoint), "--model_class", MODEL_CLASS, *args]) == 0
    assert "model input 40 x 40" in capsys.readouterr().out  # the stored data arguments still give the size
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(checkpoint), "--model_class", "fam_lightning.models.RetrievalModel", *args])
    assert "as fam_lightning.models.RetrievalModel" in capsys.readouterr().err


def test_missing_image_is_named(tmp_path: Path, checkpoint: Path, image_files, capsys) -> None:
    missing = tmp_path / "no_such_bird.jpg"
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(checkpoint), "--images", str(image_files[0]), str(missing),
                      "--references", str(image_files[2]), "--out", str(tmp_path)])
    assert "no_such_bird.jpg" in capsys.readouterr().err


def test_unreadable_image_and_missing_checkpoint_are_named(
    tmp_path: Path, checkpoint: Path, image_files, capsys
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(checkpoint), "--images", str(broken), "--explainers", "eigencam",
                      "--out", str(tmp_path), "--device", "cpu"])
    assert "broken.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(tmp_path / "gone.ckpt"), "--images", str(image_files[0]),
                      "--explainers", "eigencam"])
    assert "gone.ckpt" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(not_a_checkpoint), "--images", str(image_files[0]),
                      "--explainers", "eigencam"])
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_without_references_only_reference_free_explainers_run(
    tmp_path: Path, checkpoint: Path, image_files, capsys
) -> None:
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(checkpoint), "--images", str(image_files[0]), "--explainers", "gradcam"])
    assert "--references" in capsys.readouterr().err
    assert explain.main(["--ckpt_path", str(checkpoint), "--images", str(image_files[0]), "--explainers",
                         "grad_fam", "eigencam", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.png"]  # atomic writes leave no temporary files
    with Image.open(tmp_path / "bird.png") as image:
        assert image.width >= 3 * 150  # photo | grad_fam | eigencam
