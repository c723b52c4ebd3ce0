"""The randomisation sanity check (fam-sanity / sanity_check.py) on tiny trained checkpoints of every family."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fam_lightning.explainers import EXPLAINERS
from fam_lightning.loading import build_datamodule, load_model, read_checkpoint
from fam_lightning.tools import sanity
from tests.helpers.cli import REPO
from tests.helpers.tiny import FITS

TOP_LAYERS = {"few-shot": "backbone.features.3.1", "memory bank": "projection",
              "memory bank, patches": "backbone.features.3.1", "retrieval": "projection"}  # no head in the decision


@pytest.fixture(scope="module")
def checkpoints(trained_checkpoint) -> dict[str, Path]:
    """One tiny fit per family through train.py, as a user makes them (shared by the session)."""
    return {family: trained_checkpoint(family) for family in FITS}


def _args(ckpt: Path, **overrides) -> argparse.Namespace:
    args = sanity.build_parser().parse_args(["--ckpt_path", str(ckpt), "--device", "cpu", "--batches", "1"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FITS))
def test_cascading_randomisation_runs_on_every_family(family: str, checkpoints, tmp_path: Path) -> None:
    explainers = ["fam", "gradcam", "eigencam"]
    rows = sanity.run(_args(checkpoints[family], explainers=explainers))
    model = load_model(checkpoints[family])
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    assert layers == [name for name, _ in sanity.randomisation_order(model)]
    assert layers[0] == TOP_LAYERS[family] and layers[-1] == "backbone.features.0.0"
    assert {row["explainer"] for row in rows} == set(explainers)
    counts = {row["num_maps"] + row["num_constant"] for row in rows}
    assert len(counts) == 1 and counts.pop() > 0  # every step explains the same decisions
    for row in rows:
        assert row["num_maps"] == 0 or -1.0 <= row["spearman_mean"] <= 1.0
    eigencam = {row["layer"]: row["spearman_mean"] for row in rows if row["explainer"] == "eigencam"}
    if TOP_LAYERS[family] == "projection":  # Eigen-CAM reads only the feature maps: a random head leaves them
        assert eigencam["projection"] == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FITS))
def test_decisions_are_the_trained_models_own(family: str, checkpoints) -> None:
    """Re-embedding the reference images with the trained model gives its own references back
    (few-shot, retrieval), and the kNN references are the bank entries of the predicted class."""
    model = load_model(checkpoints[family])
    datamodule = build_datamodule(read_checkpoint(checkpoints[family]), overrides={"num_workers": 0})
    (decisions,) = sanity.collect_decisions(model, datamodule, 1)
    with torch.no_grad():
        reembedded = model.embed(model.forward_features(decisions.reference_images))[decisions.reference_rows]
    if family.startswith("memory bank"):
        weights = decisions.reference_weights
        assert (weights > 0).any(1).all() and (weights >= 0).all()
        with torch.no_grad():
            scores, rows, votes = model.knn(model.embed(model.forward_features(decisions.images)))
        # the weights are the votes for the predicted class: they sum to its kNN score
        torch.testing.assert_close(weights.sum(1), scores.max(1).values, rtol=1e-5, atol=1e-3)
        assert decisions.references.shape == (*weights.shape, model.bank.bank.shape[1])
        for query in range(weights.shape[0]):
            bank_rows = model.bank.bank[rows[query]]
            for ref in decisions.references[query][weights[query] > 0]:
                assert (bank_rows == ref).all(1).any()  # each reference is one of the K bank entries
    else:
        torch.testing.assert_close(
            torch.nn.functional.normalize(reembedded, dim=-1),
            torch.nn.functional.normalize(decisions.references, dim=-1), atol=1e-4, rtol=1e-4,
        )
        explainers = {"fam": EXPLAINERS["fam"](model)}
        own = sanity.explain_decisions(model, decisions, explainers, reembed=False)["fam"]
        again = sanity.explain_decisions(model, decisions, explainers, reembed=True)["fam"]
        torch.testing.assert_close(own, again, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_script_prints_all_ten_explainers_by_default_and_writes_csv(checkpoints, tmp_path: Path) -> None:
    out = tmp_path / "sanity.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "sanity_check.py"), "--ckpt_path", str(checkpoints["retrieval"]),
         "--batches", "1", "--out", str(out), "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| randomised down to | " + " | ".join(EXPLAINERS) + " |" in proc.stdout
    rows = list(csv.DictReader(out.open()))
    assert {r["explainer"] for r in rows} == set(EXPLAINERS)
    assert rows[0]["layer"] == "projection"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic write, nothing left behind


@pytest.mark.slow
def test_data_mode_compares_with_another_checkpoint(checkpoints, capsys) -> None:
    ckpt = checkpoints["few-shot"]
    rows = sanity.run(_args(ckpt, mode="data", shuffled_ckpt_path=str(ckpt), explainers=["fam", "gradcam"]))
    assert [r["layer"] for r in rows] == ["shuffled labels", "shuffled labels"]
    for row in rows:  # the same weights: the same maps
        assert row["spearman_mean"] == pytest.approx(1.0, abs=1e-6)

    def no_explaining(*args, **kwargs):  # the mismatch is found before any decision is explained
        raise AssertionError("collect_decisions ran before the architectures were compared")

    original, sanity.collect_decisions = sanity.collect_decisions, no_explaining
    try:
        with pytest.raises(SystemExit):
            sanity.main(["--ckpt_path", str(ckpt), "--mode", "data", "--shuffled_ckpt_path",
                         str(checkpoints["retrieval"]), "--device", "cpu"])
    finally:
        sanity.collect_decisions = original
    assert "one architecture" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sanity.main(["--ckpt_path", str(ckpt), "--mode", "data"])
    assert "--shuffled_ckpt_path" in capsys.readouterr().err


def test_checkpoint_without_class_information_is_named(tmp_path: Path, capsys) -> None:
    from fam_lightning.models import FewShotClassifier

    model = FewShotClassifier(num_classes=4)
    ckpt = tmp_path / "bare.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    with pytest.raises(SystemExit):
        sanity.main(["--ckpt_path", str(ckpt), "--device", "cpu"])
    err = capsys.readouterr().err
    assert "does not name its model class" in err and "--model_class" in err


def test_another_backbone_of_the_same_class_is_another_architecture() -> None:
    from fam_lightning.models import FewShotClassifier

    conv4 = FewShotClassifier(backbone="conv4", num_classes=4)
    sanity.check_same_architecture(conv4, FewShotClassifier(backbone="conv4", num_classes=4))  # same: no error
    with pytest.raises(ValueError, match="backbone 'conv64f', the trained checkpoint 'conv4'"):
        sanity.check_same_architecture(conv4, FewShotClassifier(backbone="conv64f", num_classes=4))
    with pytest.raises(ValueError, match="another architecture than the trained checkpoint: global_head"):
        sanity.check_same_architecture(conv4, FewShotClassifier(backbone="conv4", num_classes=5))

