"""Two "nodes" x one process each on this host (torchrun, gloo on 127.0.0.1, ``--trainer.num_nodes 2``):
one model of each family trains for two epochs; the few-shot run's resume from epoch 0 on two nodes is exact.

Each node runs in its own working directory, as on machines without a shared disk: node 1 must
write no log, event file or checkpoint; what node 0 writes is checked for duplicates. What every
rank saw and holds comes from ``tests.helpers.callbacks.RankProbe``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import REPO, TINY_DATA_ARGS
from tests.helpers.events import read_events
from tests.helpers.distributed import run_nodes

TWO_NODES = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2",
             "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]
# MoCo as the ImageNet configs run it: DDP does not broadcast rank 0's buffers at every forward, so the
# bank and queue are identical on both nodes only because every update is gathered from both
NO_BUFFER_BROADCAST = ['{"class_path": "lightning.pytorch.strategies.DDPStrategy", '
                       '"init_args": {"broadcast_buffers": false}}']

FAMILIES = {
    # 4 training episodes, 2 per node (with an odd count DistributedSampler pads: one episode would run on both)
    "fewshot": ("quickstart.yaml", "quickstart", "val/acc",
                [*TINY_DATA_ARGS, "--data.train_episodes", "4", "--trainer.strategy", "ddp"]),
    "moco": ("contrastive/moco_synthetic.yaml", "moco_synthetic", "val/knn_top1",
             ["--data.image_size", "32", "--data.batch_size", "16", "--data.synthetic_train_per_class", "8",
              "--data.synthetic_val_per_class", "4", "--data.num_workers", "0", "--model.init_args.knn_k", "10",
              "--data.local_crop", "0.5", "--trainer.check_val_every_n_epoch", "1",  # 16 px views, val every epoch
              "--model.init_args.queue_size", "64", "--trainer.strategy", *NO_BUFFER_BROADCAST]),
    "retrieval": ("retrieval/ms_synthetic.yaml", "ms_synthetic", "val/recall@1",
                  ["--data.synthetic_classes", "24", "--data.synthetic_images_per_class", "20",
                   "--data.image_size", "32", "--data.train_batches", "2", "--data.explain_queries", "16",
                   "--model.init_args.backbone", "conv4", "--trainer.strategy", "ddp"]),
}


def _args(family: str, data_dir: Path, probe_dir: Path, epochs_dir: Path) -> list[str]:
    config, _, _, extra = FAMILIES[family]
    return [
        "fit", "--config", str(REPO / "configs" / config), *extra, "--data.data_dir", str(data_dir), *TWO_NODES,
        "--trainer.callbacks+=tests.helpers.callbacks.RankProbe", f"--trainer.callbacks.out_dir={probe_dir}",
        # one checkpoint per epoch (beside the config's last / best): the resume starts from epoch 0
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", f"--trainer.callbacks.dirpath={epochs_dir}",
        "--trainer.callbacks.filename=epoch{epoch}", "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.auto_insert_metric_name=false",
    ]


def _load(probe_dir: Path) -> tuple[dict, dict]:
    return tuple(torch.load(probe_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-9)


def _check_two_node_run(family: str, node0: Path, node1: Path, rank0: dict, rank1: dict) -> None:
    _, log_name, main_metric, _ = FAMILIES[family]
    # global ranks: node r runs global rank r; one process per node, two nodes
    for node, record in enumerate((rank0, rank1)):
        assert (record["global_rank"], record["node_rank"], record["local_rank"]) == (node, node, 0), record
        assert (record["world_size"], record["num_nodes"]) == (2, 2)
        assert record["environment"] == "TorchElasticEnvironment" and record["main_address"] == "127.0.0.1"
        assert record["backend"] == "gloo"

    # per-rank training episodes / batches and evaluation shards: never the same data on both nodes
    assert len(rank0["train_batches"]) == len(rank1["train_batches"]) > 0
    assert not {b[2] for b in rank0["train_batches"]} & {b[2] for b in rank1["train_batches"]}
    shard0 = {b[3] for b in rank0["val_batches"] if b[1] == 0}
    shard1 = {b[3] for b in rank1["val_batches"] if b[1] == 0}
    assert shard0 and shard1 and not shard0 & shard1
    if rank0["val_indices"]:  # data sets with indices: the two shards split the validation set exactly
        assert not set(rank0["val_indices"]) & set(rank1["val_indices"])
        both = sorted(rank0["val_indices"] + rank1["val_indices"])
        assert both == list(range(len(both)))

    # the same model everywhere (BatchNorm running statistics are per rank: DDP only copies rank 0's at the
    # next forward); memory bank and queue updated from both nodes, identical on both
    for name, value in rank0["weights"].items():
        if not name.endswith(("running_mean", "running_var")):
            assert torch.equal(value, rank1["weights"][name]), name
    if "bank" in rank0:
        for name, value in rank0["bank"].items():
            assert torch.equal(value, rank1["bank"][name]), name
        assert (rank0["bank"]["labels"] >= 0).all()  # each node fed only its half: all rows written = gathered

    # every logged validation value is reduced over both nodes: each rank holds the same number although
    # the two nodes evaluated different data (a value only rank 0 computed would differ on rank 1)
    assert sorted(rank0["metrics"]) == sorted(rank1["metrics"]) == [0, 1]
    for epoch, values in rank0["metrics"].items():
        assert main_metric in values and any(k.startswith("val/fam_") for k in values), sorted(values)
        assert sorted(values) == sorted(rank1["metrics"][epoch])
        differ = {k: (v, rank1["metrics"][epoch][k]) for k, v in values.items() if not _same(v, rank1["metrics"][epoch][k])}
        assert not differ, f"epoch {epoch}: values that are not reduced over the nodes: {differ}"

    # node 1 writes nothing; node 0 one run folder with one probe grid per validation and each checkpoint once
    written = [p for p in node1.rglob("*") if p.is_file() and p.name != "node1.log"]
    assert not written, written
    runs = sorted((node0 / "logs" / log_name).iterdir())
    assert [r.name for r in runs] == ["version_0"], runs
    scalars, images = read_events(runs[0])
    probe_steps = images["val/fam_probe"]
    assert len(probe_steps) == len(set(probe_steps)) == 3, probe_steps  # step 0 (untrained) + 2 validations
    for tag, points in scalars.items():
        if not tag.startswith("val/"):
            continue
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{tag} written more than once per step: {steps}"
    assert rank0["metrics"][1][main_metric] == pytest.approx(dict(scalars[main_metric])[max(dict(scalars[main_metric]))])
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len([c for c in checkpoints if c.startswith("best-")]) == 1, checkpoints
    assert all(c.endswith(".ckpt") for c in checkpoints), checkpoints  # no temporary leftovers


def _two_node_fit_and_resume(family: str, tmp_path: Path, data_dir: Path, resume: bool) -> None:
    straight = tmp_path / "straight"
    epochs = straight / "node0" / "epochs"
    run_nodes(_args(family, data_dir, straight / "probe", epochs), [straight / "node0", straight / "node1"])
    rank0, rank1 = _load(straight / "probe")
    _check_two_node_run(family, straight / "node0", straight / "node1", rank0, rank1)
    if family == "retrieval":
        # each rank embeds half the gallery; gathered, Recall@K is over the whole test split: 12 test classes
        # x 20 images, so a recall is a multiple of 1/240 only if all 240 queries were counted
        recall = rank0["metrics"][0]["val/recall@1"]
        assert abs(recall * 240 / 100 - round(recall * 240 / 100)) < 1e-3, recall
    assert sorted(p.name for p in epochs.iterdir()) == ["epoch0.ckpt", "epoch1.ckpt"]
    if not resume:
        return

    resumed = tmp_path / "resumed"
    run_nodes([*_args(family, data_dir, resumed / "probe", resumed / "node0" / "epochs"),
               "--ckpt_path", str(epochs / "epoch0.ckpt")], [resumed / "node0", resumed / "node1"])
    for straight_rank, resumed_rank in zip((rank0, rank1), _load(resumed / "probe")):
        assert resumed_rank["train_batches"] == [b for b in straight_rank["train_batches"] if b[0] == 1]
        assert resumed_rank["metrics"][1] == straight_rank["metrics"][1]
        for name, value in straight_rank["weights"].items():
            assert torch.equal(value, resumed_rank["weights"][name]), name
        for name, value in straight_rank.get("bank", {}).items():
            assert torch.equal(value, resumed_rank["bank"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("family", ["moco", "retrieval"])
def test_two_nodes_fit(family: str, tmp_path: Path, data_dir: Path) -> None:
    _two_node_fit_and_resume(family, tmp_path, data_dir, resume=False)


@pytest.mark.slow
def test_two_nodes_fit_and_resume_exactly(tmp_path: Path, data_dir: Path) -> None:
    _two_node_fit_and_resume("fewshot", tmp_path, data_dir, resume=True)
