"""Published NPID / MoCo checkpoint files, written as their authors' code writes them (test helpers).

lemniscate.pytorch's classes are re-created as files of a temporary ``lib``
package (``lib.NCEAverage``, ``lib.LinearAverage``, ``lib.alias_multinomial``,
their code as in the repository, minus ``.cuda()``) put on ``sys.path`` only
while the file is saved, so the reader never sees them; the ResNet is wrapped in
``nn.DataParallel`` as ``main.py`` does, in the zip or the legacy (PyTorch 0.4
style) format.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

DIM = 128

LEMNISCATE_SOURCES = {
    "__init__.py": "# nothing\n",
    "alias_multinomial.py": '''
        import torch

        class AliasMethod(object):
            def __init__(self, probs):
                if probs.sum() > 1:
                    probs.div_(probs.sum())
                K = len(probs)
                self.prob = torch.zeros(K)
                self.alias = torch.LongTensor([0]*K)
                smaller = []
                larger = []
                for kk, prob in enumerate(probs):
                    self.prob[kk] = K*prob
                    if self.prob[kk] < 1.0:
                        smaller.append(kk)
                    else:
                        larger.append(kk)
                while len(smaller) > 0 and len(larger) > 0:
                    small = smaller.pop()
                    large = larger.pop()
                    self.alias[small] = large
                    self.prob[large] = (self.prob[large] - 1.0) + self.prob[small]
                    if self.prob[large] < 1.0:
                        smaller.append(large)
                    else:
                        larger.append(large)
                for last_one in smaller+larger:
                    self.prob[last_one] = 1
    ''',
    "NCEAverage.py": '''
        import torch
        from torch import nn
        from .alias_multinomial import AliasMethod
        import math

        class NCEAverage(nn.Module):
            def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5, Z=None):
                super(NCEAverage, self).__init__()
                self.nLem = outputSize
                self.unigrams = torch.ones(self.nLem)
                self.multinomial = AliasMethod(self.unigrams)
                self.K = K
                self.register_buffer('params',torch.tensor([K, T, -1, momentum]));
                stdv = 1. / math.sqrt(inputSize/3)
                self.register_buffer('memory', torch.rand(outputSize, inputSize).mul_(2*stdv).add_(-stdv))
    ''',
    "LinearAverage.py": '''
        import torch
        from torch import nn
        import math

        class LinearAverage(nn.Module):
            def __init__(self, inputSize, outputSize, T=0.07, momentum=0.5):
                super(LinearAverage, self).__init__()
                stdv = 1 / math.sqrt(inputSize)
                self.nLem = outputSize
                self.register_buffer('params',torch.tensor([T, momentum]));
                stdv = 1. / math.sqrt(inputSize/3)
                self.register_buffer('memory', torch.rand(outputSize, inputSize).mul_(2*stdv).add_(-stdv))
    ''',
}


class Thnn04Backend:
    """What a PyTorch 0.4 module's ``_backend`` pickles as: a call of torch's thnn backend getter."""

    def __reduce__(self) -> tuple:
        return torch.nn.backends.thnn._get_thnn_function_backend, ()


def source_resnet18(head: str, seed: int) -> nn.Module:
    """torchvision ResNet-18 with the fc of NPID / MoCo v1 (linear) or MoCo v2 (MLP), non-trivial BN stats."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    if head == "linear":
        model.fc = nn.Linear(512, DIM)
    else:
        model.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, DIM))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model(images), dim=1)  # NPID's Normalize(2) / MoCo's F.normalize


def lemniscate_knn(features: torch.Tensor, memory: torch.Tensor, labels: torch.Tensor, k: int,
                   t: float, classes: int) -> torch.Tensor:
    """lemniscate.pytorch test.kNN: ``features @ memory.t()`` (raw rows), top-K vote exp(s / T) for their label."""
    similarity, rows = (features @ memory.t()).topk(k, dim=1)
    votes = torch.zeros(features.shape[0], classes).scatter_add_(1, labels[rows], (similarity / t).exp())
    return votes.argmax(1)


def lemniscate_package(root: Path) -> Path:
    """Write lemniscate's ``lib`` package under ``root``; returns ``root`` (for ``sys.path``)."""
    package = root / "lib"
    package.mkdir(parents=True, exist_ok=True)
    for name, source in LEMNISCATE_SOURCES.items():
        (package / name).write_text(textwrap.dedent(source).lstrip())
    return root


def write_lemniscate_checkpoint(path: Path, source: nn.Module, memory: torch.Tensor,
                                monkeypatch: pytest.MonkeyPatch, kind: str = "nce", legacy: bool = False,
                                extra: dict | None = None) -> None:
    """lemniscate main.py's save_checkpoint: the DataParallel model's keys, the NCEAverage module pickled whole.

    ``kind``: "nce" (NCEAverage) or "linear" (LinearAverage); ``legacy``: the pre-1.6 format, with 0.4's
    ``_backend`` attributes; ``extra``: more entries of the saved dict.
    """
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(lemniscate_package(path.parent / "lemniscate_src")))
        from lib.LinearAverage import LinearAverage
        from lib.NCEAverage import NCEAverage

        if kind == "nce":
            lemniscate = NCEAverage(DIM, memory.shape[0], 16)
            lemniscate.params[2] = 123.0  # Z, estimated on the first batch
        else:
            lemniscate = LinearAverage(DIM, memory.shape[0])
        lemniscate.memory.copy_(memory)
        model = nn.DataParallel(source)
        if legacy:
            lemniscate._backend = Thnn04Backend()
        torch.save({
            "epoch": 200, "arch": "resnet18", "state_dict": model.state_dict(), "lemniscate": lemniscate,
            "best_prec1": 41.5,
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9).state_dict(),
            **(extra or {}),
        }, path, _use_new_zipfile_serialization=not legacy)
    for name in [name for name in sys.modules if name == "lib" or name.startswith("lib.")]:
        del sys.modules[name]
    assert "lib" not in sys.modules  # the reader runs without lemniscate's classes


def write_moco_checkpoint(path: Path, query: nn.Module, key: nn.Module | None, prefix: str, queue: int = 64,
                          extra: dict | None = None) -> None:
    """main_moco.py's checkpoint: the builder's state_dict (encoder_q, encoder_k, queue 128 x K, queue_ptr)."""
    state = {f"{prefix}encoder_q.{k}": v for k, v in query.state_dict().items()}
    if key is not None:
        state.update({f"{prefix}encoder_k.{k}": v for k, v in key.state_dict().items()})
    generator = torch.Generator().manual_seed(5)
    state[f"{prefix}queue"] = F.normalize(torch.randn(DIM, queue, generator=generator), dim=0)
    state[f"{prefix}queue_ptr"] = torch.tensor([16])
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": state, "optimizer": {}, **(extra or {})}, path)
